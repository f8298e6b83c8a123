"""The CPU fused argmax of refmatch._C (k = 1, float32) against the torch walk and the float64
oracle: ties across lanes, sub-blocks, native calls, row chunks and threads; NaN, infinities,
ignored references; both vector widths where this CPU runs them."""
from types import SimpleNamespace

import pytest
import torch

from oracle import assert_matches_oracle
from refmatch.backends import cpu_argmax
from refmatch.backends.torch_backend import match_chunked

ISAS = cpu_argmax.native_isas()
pytestmark = pytest.mark.skipif(not ISAS, reason="refmatch._C has no fused argmax for this CPU")


@pytest.fixture(params=ISAS or ["none"])
def isa(request, monkeypatch):
    """Each vector width this CPU runs; small native calls (600 references at D = 4) and row
    chunks, so that a few hundred references and rows cross every boundary."""
    monkeypatch.setenv("REFMATCH_CPU_ARGMAX", request.param)
    monkeypatch.setattr(cpu_argmax, "PREPARED_BYTES", 600 * 4 * 4)
    monkeypatch.setattr(cpu_argmax, "ROW_CHUNK", 40)
    return request.param


def walks(query, reference, metric, ignored=None, monkeypatch=None):
    """(fused, torch walk) results of match_chunked on [N, D] rows."""
    maps = query.T[None, :, :, None]
    fused = match_chunked(maps, reference, ignored, 1, metric)
    with monkeypatch.context() as torch_walk:
        torch_walk.setenv("REFMATCH_CPU_ARGMAX", "0")
        walked = match_chunked(maps, reference, ignored, 1, metric)
    return fused, walked


def test_the_native_pass_runs(isa, monkeypatch):
    calls = []
    module = cpu_argmax.native_module()
    monkeypatch.setattr(cpu_argmax, "native_module", lambda: SpyModule(module, calls))
    match_chunked(torch.randn(1, 8, 50, 1), torch.randn(300, 8), None, 1, "dot")
    assert calls and all(call[0] == isa for call in calls)


class SpyModule:
    def __init__(self, module, calls):
        self.module, self.calls = module, calls

    def __getattr__(self, name):
        if name != "cpu_argmax_rows":
            return getattr(self.module, name)
        return lambda *args: (self.calls.append(args), self.module.cpu_argmax_rows(*args))[1]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("n, m, d", [(1, 1, 1), (7, 33, 5), (101, 257, 24), (45, 200, 130)])
def test_matches_the_oracle(isa, metric, n, m, d):
    query, reference = torch.randn(n, d), torch.randn(m, d)
    score, index = match_chunked(query.T[None, :, :, None], reference, None, 1, metric)
    assert_matches_oracle(SimpleNamespace(score=score[:, 0], index=index[:, 0], label=None), query, reference,
                          metric)


def test_integer_features_give_the_walks_exact_results(isa, monkeypatch):
    # Small integers: every sum is exact in any order, so ties are real and both walks agree.
    query = torch.randint(-2, 3, (90, 6)).float()
    reference = torch.randint(-2, 3, (700, 6)).float()
    for metric in ("dot", "l2"):
        fused, walked = walks(query, reference, metric, monkeypatch=monkeypatch)
        assert torch.equal(fused[0], walked[0]) and torch.equal(fused[1], walked[1])


def test_ties_go_to_the_lowest_index_across_lanes_blocks_and_threads(isa, monkeypatch):
    reference = torch.randn(700, 4)
    tied = [5, 37, 511, 512, 600, 699]  # lanes apart, across a 512-row sub-block, a native call (600), last
    reference[tied] = 3.0
    query = torch.ones(70, 4)  # two row chunks (40), parts for two threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for winner in tied:
        score, index = match_chunked(query.T[None, :, :, None], reference, None, 1, "dot")
        assert (index == winner).all() and (score == 12.0).all()
        reference[winner] = 0.0


def test_nan_inf_and_ignored_references(isa, monkeypatch):
    reference = torch.randn(700, 8)
    reference[10] = float("nan")
    reference[20, 0] = float("inf")
    query = torch.randn(50, 8)
    query[0] = float("nan")
    query[1] = 0.0
    query[1, 0] = 1.0  # its dot with row 20 is +inf: a match
    ignored = torch.zeros(700, dtype=torch.bool)
    ignored[100:] = True
    for metric in ("dot", "l2", "cosine"):
        fused, walked = walks(query, reference, metric, ignored, monkeypatch)
        assert torch.equal(fused[1], walked[1])
        torch.testing.assert_close(fused[0], walked[0], rtol=1e-5, atol=1e-5)
        assert fused[1][0, 0] == -1 and (fused[1][2:] < 100).all()
    assert walks(query, reference, "dot", ignored, monkeypatch)[0][1][1, 0] == 20


def test_every_reference_ignored_gives_minus_one(isa):
    ignored = torch.ones(1300, dtype=torch.bool)
    score, index = match_chunked(torch.randn(1, 4, 9, 1), torch.randn(1300, 4), ignored, 1, "l2")
    assert (index == -1).all() and (score == float("inf")).all()


def test_one_thread_and_two_agree(isa, monkeypatch):
    query, reference = torch.randn(333, 16), torch.randn(500, 16)
    one = match_chunked(query.T[None, :, :, None], reference, None, 1, "cosine")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    two = match_chunked(query.T[None, :, :, None], reference, None, 1, "cosine")
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_bad_native_arguments_are_refused():
    module = cpu_argmax.native_module()
    state = torch.zeros(4, 32)
    with pytest.raises(ValueError, match="isa must be one of"):
        module.cpu_argmax_width("sse9")
    with pytest.raises(ValueError, match="begin <= end <= rows"):
        module.cpu_argmax_rows(ISAS[0], 0, 4, 8, 0, 4, 0, 1.0, 0, state.data_ptr(), state.data_ptr(), 0, 5)
    with pytest.raises(ValueError, match="below 2\\^31"):
        module.cpu_argmax_rows(ISAS[0], 0, 4, 8, 0, 4, 0, 1.0, 2**31 - 2, state.data_ptr(), state.data_ptr(), 0, 4)


def test_why_it_does_not_run_is_named(monkeypatch):
    from refmatch.backends.torch_backend import TorchBackend

    assert cpu_argmax.unavailable_reason() is None and "fused in C++" in TorchBackend().status()[1]
    monkeypatch.setenv("REFMATCH_CPU_ARGMAX", "0")
    assert cpu_argmax.native_isas() == [] and "REFMATCH_CPU_ARGMAX=0" in TorchBackend().status()[1]
    monkeypatch.setenv("REFMATCH_CPU_ARGMAX", "sse9")
    assert cpu_argmax.native_isas() == [] and "REFMATCH_CPU_ARGMAX=sse9: this CPU" in TorchBackend().status()[1]
    monkeypatch.setenv("REFMATCH_CPU_ARGMAX", ISAS[-1])
    assert cpu_argmax.native_isas() == [ISAS[-1]]
    monkeypatch.delenv("REFMATCH_CPU_ARGMAX")
    monkeypatch.setattr(cpu_argmax, "native_module", lambda: None)
    assert cpu_argmax.unavailable_reason() == "refmatch._C is not built"
    assert not cpu_argmax.applies(torch.zeros(4, 2), torch.zeros(3, 2), 1)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_threads(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    query, reference = torch.randn(500, 8), torch.randn(300, 8)
    expected = match_chunked(query.T[None, :, :, None], reference, None, 1, "dot")[1]  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(match_chunked, (query.T[None, :, :, None], reference, None, 1, "dot"))
        assert torch.equal(child.get(timeout=60)[1], expected)


def test_its_benchmark_writes_a_row_per_walk(tmp_path, monkeypatch):
    import json
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "bench_cpu_argmax.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--sizes", "64x300x8", "--metrics", "l2", "--repeat", "1",
                                      "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    (result,) = tmp_path.glob("*-cpu-argmax-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [row["walk"] for row in rows] == ["torch GEMM walk"] + [f"fused {cpu_argmax.ISA_NAMES[i]}" for i in ISAS]
    assert all(row["agreement"] == 1.0 and row["ms"] > 0 for row in rows)
