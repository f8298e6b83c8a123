"""CPU micro-benchmarks for pytest-benchmark (``pytest bench --benchmark-only``), and checks of the
bench scripts' command lines (``pytest bench/test_bench_cpu.py``; seconds).

They sit outside python_tests/, so the CI suite never runs them. Each match test times
one method at N=2048, M=16384, D=128, float32, on the same inputs; the phantom test times the main
job's phantom generator on one thread, as in a DataLoader worker. The script checks run each
script's ``main`` on tiny sizes.
"""
import importlib
import json

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


SCRIPT_RUNS = {"bench_cpu_topk": ["--sizes", "64x300x8", "--k", "1", "2"], "bench_screening": ["--size", "64x300x8"]}


@pytest.mark.parametrize("script", SCRIPT_RUNS)
def test_an_interrupted_script_keeps_its_rows_and_exits_130(script, tmp_path, monkeypatch, capsys):
    from refmatch.backends import cpu_topk

    if not cpu_topk.native_isas():
        pytest.skip(f"the fused top-k does not run here: {cpu_topk.unavailable_reason()}")
    module = importlib.import_module(script)
    measure, calls = module.measure, []

    def measure_then_interrupt(*args):  # Ctrl-C while the second row is timed
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*args)

    monkeypatch.setattr(module, "measure", measure_then_interrupt)
    with pytest.raises(SystemExit) as stopped:
        module.main([*SCRIPT_RUNS[script], "--metrics", "l2", "--repeat", "1", "--out", str(tmp_path)])
    (result,) = tmp_path.glob("*.json")
    results, error = json.loads(result.read_text()), capsys.readouterr().err
    assert stopped.value.code == 130 and error.count("\n") == 1
    assert "interrupted" in error and str(result.resolve()) in error
    assert results["meta"]["complete"] is False and results["meta"]["repeat"] == 1 and "env" in results["meta"]
    first_rows = 1 + len(cpu_topk.native_isas()) if script == "bench_cpu_topk" else 1  # a row per walk / one
    assert len(results["rows"]) == first_rows
    table = result.with_suffix(".md").read_text()
    assert table.count("| l2 |") == len(results["rows"]) and "**Incomplete:** the run stopped" in table
    assert f"Command: `python bench/{script}.py " in table and "--metrics l2 --repeat 1" in table


@pytest.mark.parametrize("script, argv, size", [("bench_cpu_topk", ["--sizes", "64x512x8", "--k", "1024"], "64x512x8"),
                                                ("bench_screening", ["--size", "64x8x8", "--k", "16"], "64x8x8")])
def test_a_k_above_m_is_refused_before_timing(script, argv, size, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        importlib.import_module(script).main([*argv, "--out", str(tmp_path)])
    error = capsys.readouterr().err.splitlines()[-1]
    assert refused.value.code == 2 and "--k" in error and size in error and not any(tmp_path.iterdir())


def test_a_run_folder_the_screening_benchmark_cannot_read_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        importlib.import_module("bench_screening").main(["--run", str(tmp_path / "missing"), "--out", str(tmp_path)])
    error = capsys.readouterr().err.splitlines()[-1]
    assert refused.value.code == 2 and "checkpoint not found" in error and not any(tmp_path.glob("*.json"))


@pytest.mark.parametrize("script", ["profile_match", "sanitize_match"])
def test_the_cuda_scripts_refuse_a_machine_without_cuda(script, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as refused:
        importlib.import_module(script).main([])
    assert refused.value.code == 2 and "needs a CUDA device" in capsys.readouterr().err.splitlines()[-1]
