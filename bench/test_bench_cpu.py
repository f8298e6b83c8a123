"""CPU micro-benchmarks for pytest-benchmark (``pytest bench --benchmark-only``), and checks of the
bench scripts' command lines (``pytest bench/test_bench_cpu.py``; seconds).

They sit outside python_tests/, so the CI suite never runs them. Each match test times
one method at N=2048, M=16384, D=128, float32, on the same inputs; the phantom test times the main
job's phantom generator on one thread, as in a DataLoader worker. The script checks run each
script's ``main`` on tiny sizes.
"""
import importlib

import pytest
import torch

import refmatch

N, M, D = 2048, 16384, 128


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=generator), torch.randn(M, D, generator=generator)


@pytest.mark.parametrize("metric, k", [("dot", 1), ("l2", 1), ("dot", 8)])
def test_refmatch_torch(benchmark, inputs, metric, k):
    query, reference = inputs
    benchmark(lambda: refmatch.match(query, reference, k=k, metric=metric, backend="torch"))


def test_gemm_ceiling(benchmark, inputs):
    query, reference = inputs
    out = torch.empty(N, M)
    benchmark(lambda: torch.mm(query, reference.T, out=out))


def test_faiss_flat_ip(benchmark, inputs):
    faiss = pytest.importorskip("faiss")
    query, reference = inputs
    index = faiss.IndexFlatIP(D)
    index.add(reference.numpy())
    benchmark(lambda: index.search(query.numpy(), 1))


def test_phantom_on_one_thread(benchmark):
    from refmatch.data.phantoms import make_phantom

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark(make_phantom, 0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("script", ["profile_match", "sanitize_match"])
def test_the_cuda_scripts_refuse_a_machine_without_cuda(script, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as refused:
        importlib.import_module(script).main([])
    assert refused.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err.splitlines()[-1]
