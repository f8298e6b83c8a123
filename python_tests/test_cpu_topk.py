"""The CPU fused top-k of refmatch._C (float32, 1 <= k <= 1024) against the torch walk and the
float64 oracle: ties across lanes, sub-blocks, native calls and threads; NaN, infinities,
ignored references, unfilled slots; both vector widths where this CPU runs them."""
from types import SimpleNamespace

import pytest
import torch

import refmatch

from oracle import assert_matches_oracle
from refmatch.backends import cpu_topk
from refmatch.backends.torch_backend import match_chunked

ISAS = cpu_topk.native_isas()
pytestmark = pytest.mark.skipif(not ISAS, reason="refmatch._C has no fused top-k for this CPU")


@pytest.fixture(params=ISAS or ["none"])
def isa(request, monkeypatch):
    """Each vector width this CPU runs; small native calls (600 references at D = 4), so that a
    few hundred references cross every boundary."""
    monkeypatch.setenv("REFMATCH_CPU_TOPK", request.param)
    monkeypatch.setattr(cpu_topk, "PREPARED_BYTES", 600 * 4 * 4)
    return request.param


def fused_match(query, reference, metric, k=1, ignored=None):
    """match_chunked of [N, D] rows: (score [N, k], index [N, k])."""
    return match_chunked(query.T[None, :, :, None], reference, ignored, k, metric)


def both_walks(query, reference, metric, k=1, ignored=None):
    """(fused, torch walk) results."""
    fused = fused_match(query, reference, metric, k, ignored)
    with cpu_topk.forced("0"):
        return fused, fused_match(query, reference, metric, k, ignored)


class SpyModule:
    def __init__(self, module, calls):
        self.module, self.calls = module, calls

    def __getattr__(self, name):
        if name != "cpu_topk_rows":
            return getattr(self.module, name)
        return lambda *args: (self.calls.append(args), self.module.cpu_topk_rows(*args))[1]


def test_the_native_pass_runs(isa, monkeypatch):
    calls, module = [], cpu_topk.native_module()
    monkeypatch.setattr(cpu_topk, "native_module", lambda: SpyModule(module, calls))
    fused_match(torch.randn(50, 8), torch.randn(300, 8), "dot", k=3)
    assert calls and all(call[0] == isa and call[9] == 3 for call in calls)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("n, m, d", [(1, 5, 1), (7, 33, 5), (101, 257, 24), (45, 200, 130)])
def test_matches_the_oracle(isa, metric, k, n, m, d):
    query, reference = torch.randn(n, d), torch.randn(m, d)
    score, index = fused_match(query, reference, metric, k)
    result = SimpleNamespace(score=score if k > 1 else score[:, 0], index=index if k > 1 else index[:, 0], label=None)
    assert_matches_oracle(result, query, reference, metric, k=k)


@pytest.mark.parametrize("k", [1, 4, 64, 300])
def test_integer_features_give_the_walks_exact_results(isa, k):
    # Small integers: every sum is exact in any order, so ties are real and both walks agree.
    query = torch.randint(-2, 3, (90, 6)).float()
    reference = torch.randint(-2, 3, (700, 6)).float()
    for metric in ("dot", "l2"):
        fused, walked = both_walks(query, reference, metric, k)
        assert torch.equal(fused[0], walked[0]) and torch.equal(fused[1], walked[1])


def test_ties_go_to_the_lowest_index_across_lanes_blocks_and_threads(isa, monkeypatch):
    reference = torch.randn(700, 4)
    tied = [5, 37, 511, 512, 600, 699]  # lanes apart, across a 512-row sub-block, a native call (600), last
    reference[tied] = 3.0
    query = torch.ones(70, 4)  # parts for two threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    score, index = fused_match(query, reference, "dot", k=4)
    assert (index == torch.tensor(tied[:4])).all() and (score == 12.0).all()
    for winner in tied:
        score, index = fused_match(query, reference, "dot")
        assert (index == winner).all() and (score == 12.0).all()
        reference[winner] = 0.0


def test_long_lists_take_entries_at_the_top_and_the_bottom(isa):
    """Scores that rise along the bank enter every list at its top (a move of the whole list),
    falling ones at its bottom; k = 300 crosses a sub-block and a native call."""
    reference = torch.arange(700.0)[:, None]
    for sign, expected in ((1.0, torch.arange(699, 399, -1)), (-1.0, torch.arange(300))):
        score, index = fused_match(torch.full((9, 1), sign), reference, "dot", k=300)
        assert torch.equal(index, expected.expand(9, -1)) and torch.equal(score, sign * expected.float().expand(9, -1))


def test_nan_inf_ignored_references_and_unfilled_slots(isa):
    reference = torch.randn(700, 8)
    reference[10] = float("nan")
    reference[20, 0] = float("inf")
    query = torch.randn(50, 8)
    query[0] = float("nan")
    query[1] = 0.0
    query[1, 0] = 1.0  # its dot with row 20 is +inf: a match
    ignored = torch.zeros(700, dtype=torch.bool)
    ignored[6:] = True  # 6 references left for 8 slots
    for metric in ("dot", "l2", "cosine"):
        fused, walked = both_walks(query, reference, metric, 8, ignored)
        assert torch.equal(fused[1], walked[1])
        torch.testing.assert_close(fused[0], walked[0], rtol=1e-5, atol=1e-5)
        assert (fused[1][0] == -1).all() and (fused[1][2:, :6] >= 0).all() and (fused[1][:, 6:] == -1).all()
    ignored[6:21] = False
    assert both_walks(query, reference, "dot", 1, ignored)[0][1][1, 0] == 20


def test_every_reference_ignored_gives_minus_one(isa):
    ignored = torch.ones(1300, dtype=torch.bool)
    score, index = match_chunked(torch.randn(1, 4, 9, 1), torch.randn(1300, 4), ignored, 3, "l2")
    assert (index == -1).all() and (score == float("inf")).all()


def test_one_thread_and_two_agree(isa, monkeypatch):
    query, reference = torch.randn(333, 16), torch.randn(500, 16)
    one = fused_match(query, reference, "cosine", k=6)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    two = fused_match(query, reference, "cosine", k=6)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_above_its_largest_k_the_torch_walk_runs(monkeypatch):
    calls, module = [], cpu_topk.native_module()
    monkeypatch.setattr(cpu_topk, "native_module", lambda: SpyModule(module, calls))
    fused_match(torch.randn(20, 4), torch.randn(100, 4), "dot", k=cpu_topk.MAX_K + 1)
    assert not calls


def test_bad_native_arguments_are_refused():
    module = cpu_topk.native_module()
    state = torch.zeros(4, 64)
    pointers = (state.data_ptr(), state.data_ptr())
    with pytest.raises(ValueError, match="isa must be one of"):
        module.cpu_topk_rows("sse9", 0, 4, 8, 0, 4, 0, 1.0, 0, 1, *pointers, 0, 4)
    with pytest.raises(ValueError, match="begin <= end <= rows"):
        module.cpu_topk_rows(ISAS[0], 0, 4, 8, 0, 4, 0, 1.0, 0, 1, *pointers, 0, 5)
    with pytest.raises(ValueError, match="k >= 1"):
        module.cpu_topk_rows(ISAS[0], 0, 4, 8, 0, 4, 0, 1.0, 0, 0, *pointers, 0, 4)
    with pytest.raises(ValueError, match="below 2\\^31"):
        module.cpu_topk_rows(ISAS[0], 0, 4, 8, 0, 4, 0, 1.0, 2**31 - 2, 1, *pointers, 0, 4)


def test_why_it_does_not_run_is_named(monkeypatch):
    from refmatch.backends.torch_backend import TorchBackend

    assert cpu_topk.unavailable_reason() is None and "fused in C++" in TorchBackend().status()[1]
    monkeypatch.setenv("REFMATCH_CPU_TOPK", "0")
    assert cpu_topk.native_isas() == [] and "REFMATCH_CPU_TOPK=0" in TorchBackend().status()[1]
    monkeypatch.setenv("REFMATCH_CPU_TOPK", "sse9")
    assert cpu_topk.native_isas() == [] and "float32 walks raise: REFMATCH_CPU_TOPK=sse9: this CPU" in \
        TorchBackend().status()[1]
    with pytest.raises(ValueError, match="REFMATCH_CPU_TOPK=sse9: this CPU and build run "):  # not a quiet GEMM walk
        refmatch.match(torch.randn(4, 2), torch.randn(3, 2), backend="torch")
    assert refmatch.match(torch.randn(4, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64),
                          backend="torch")[1].shape == (4,)  # a walk it never takes runs on
    monkeypatch.setenv("REFMATCH_CPU_TOPK", ISAS[-1])
    assert cpu_topk.native_isas() == [ISAS[-1]]
    monkeypatch.delenv("REFMATCH_CPU_TOPK")
    monkeypatch.setattr(cpu_topk, "native_module", lambda: None)
    assert cpu_topk.unavailable_reason() == "refmatch._C is not built"
    assert not cpu_topk.applies(torch.zeros(4, 2), torch.zeros(3, 2), 1)
    monkeypatch.setenv("REFMATCH_CPU_TOPK", "avx2")
    with pytest.raises(ValueError, match="REFMATCH_CPU_TOPK=avx2: refmatch._C is not built"):
        cpu_topk.check_setting()


@pytest.mark.parametrize("setting, refused", [("avx-512", True), ("AVX2", True), ("avx512", False), ("0", False)])
def test_under_torch_compile_a_misspelt_width_is_refused(monkeypatch, setting, refused):
    """torch.compile's trace cannot ask _C which widths it holds; a value that names none is still refused."""
    from refmatch.backends import MatchProblem
    from refmatch.backends.torch_backend import TorchBackend

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(cpu_topk, "native_module", lambda: pytest.fail("asked _C while tracing"))
    monkeypatch.setenv("REFMATCH_CPU_TOPK", setting)
    problem = MatchProblem(torch.device("cpu"), torch.float32, 1, "dot", 8)
    if refused:
        with pytest.raises(ValueError, match=f"REFMATCH_CPU_TOPK={setting}: not a setting; use 0 .off., 1"):
            TorchBackend().decline_reason(problem)
    else:
        assert TorchBackend().decline_reason(problem) is None


def test_its_benchmark_writes_a_row_per_walk(tmp_path, monkeypatch):
    import json
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "bench_cpu_topk.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--sizes", "64x300x8", "--metrics", "l2", "--k", "1", "3",
                                      "--repeat", "1", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    (result,) = tmp_path.glob("*-cpu-topk-*.json")
    results = json.loads(result.read_text())
    rows = results["rows"]
    assert results["meta"]["isas"] == list(ISAS) and "median of 1" in results["meta"]["timing"]
    walks = ["torch GEMM walk"] + [f"fused {cpu_topk.ISA_NAMES[isa]}" for isa in ISAS]
    assert [(row["k"], row["walk"]) for row in rows] == [(k, walk) for k in (1, 3) for walk in walks]
    assert all(row["agreement"] == 1.0 and row["ms"] > 0 for row in rows)


def test_the_classwise_max_of_a_mixed_bank_takes_one_fused_walk_per_class(isa, monkeypatch):
    import refmatch
    from oracle import dense_scores

    calls, module = [], cpu_topk.native_module()
    monkeypatch.setattr(cpu_topk, "native_module", lambda: SpyModule(module, calls))
    query, reference = torch.randn(30, 8), torch.randn(200, 8)
    labels = torch.randint(0, 4, (200,))  # mixed: each class's rows copied in turn
    labels[labels == 2] = 255  # ignored
    best = refmatch.classwise_max(query, reference, labels, 4, metric="dot", backend="torch", ignore_index=255)
    scores = dense_scores(query, reference, "dot")
    expected = torch.stack([scores[:, labels == c].amax(dim=1) for c in (0, 1, 3)], dim=1)
    assert (best[:, 2] == float("-inf")).all()
    torch.testing.assert_close(best[:, [0, 1, 3]].double(), expected, rtol=1e-5, atol=1e-5)
    assert [call[5] for call in calls] == [int((labels == c).sum()) for c in (0, 1, 3)] and all(
        call[9] == 1 for call in calls), "one walk per present class, over its counted rows only"


def test_the_classwise_max_of_a_mixed_bank_never_copies_the_bank():
    """Before session 27 a bank not stored class by class was sorted, a copy of it all."""
    import refmatch
    from refmatch.bench_timing import PeakMemory

    reference = torch.randn(800_000, 64)  # 195 MiB
    labels = torch.arange(800_000) % 4  # mixed; classes of 49 MiB
    query = torch.randn(16, 64)
    refmatch.classwise_max(query, reference, labels, 4, backend="torch")  # warm-up
    with PeakMemory("cpu") as peak:
        refmatch.classwise_max(query, reference, labels, 4, backend="torch")
    assert peak.peak_mib < 150, "a class's copy and one prepared block (32 MiB), not the bank's 195 MiB"


def test_calls_bounded_for_ctrl_c_give_the_same_results(isa, monkeypatch):
    """A native call holds no GIL, so Ctrl-C waited for a whole block of every row (5 s at
    65536 x 262144 x 64): calls now split references, then rows, near WORK_PER_THREAD a thread."""
    query, reference = torch.randn(300, 4), torch.randn(700, 4)
    whole = fused_match(query, reference, "l2", k=5)
    calls, module = [], cpu_topk.native_module()
    monkeypatch.setattr(cpu_topk, "native_module", lambda: SpyModule(module, calls))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(cpu_topk, "WORK_PER_THREAD", 1)
    monkeypatch.setattr(cpu_topk, "MIN_REFS_PER_CALL", 100)
    split = fused_match(query, reference, "l2", k=5)
    assert torch.equal(split[0], whole[0]) and torch.equal(split[1], whole[1])
    row_ranges = {(call[12], call[13]) for call in calls}  # 128 rows a call: 64 a thread
    assert row_ranges == {(0, 128), (128, 256), (256, 300)} and {call[5] for call in calls} == {100}
