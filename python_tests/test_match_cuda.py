"""The fused CUDA kernel (refmatch._C) against the float64 oracle. Needs a GPU (sm_80+)."""
import pytest
import torch

import refmatch
from oracle import assert_matches_oracle, dense_scores, oriented, tolerance, topk_oracle

pytestmark = pytest.mark.cuda
SHAPES = [(1, 1, 1), (7, 33, 257), (33, 70, 7), (70, 7, 33), (300, 1000, 128), (129, 130, 300)]
BLOCK_M = 64  # reference rows per kernel tile (refmatch._C.match_layout()["block_m"])


@pytest.fixture(autouse=True)
def mma_sync_kernel(monkeypatch):
    """sm_90 cards default to the wgmma kernel (test_match_cuda_sm90.py); this file checks mma.sync on every card."""
    monkeypatch.setenv("REFMATCH_CUDA_HOPPER", "0")


def match_cuda(query, reference, metric="dot", **kwargs):
    return refmatch.match(query, reference, metric=metric, backend="cuda", **kwargs)


def raw_argmax(query_rows, reference, metric="dot", splits=None):
    from refmatch.backends.cuda_backend import match_argmax_cuda
    from refmatch.backends.scoring import reference_stat

    return match_argmax_cuda(query_rows.T[None, :, :, None], reference, reference_stat(reference, metric),
                             metric, splits=splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("n, m, d", SHAPES)
def test_rows_match_oracle(dtype, metric, n, m, d):
    query = torch.randn(n, d, device="cuda").to(dtype)
    reference = torch.randn(m, d, device="cuda").to(dtype)
    labels = torch.randint(0, 3, (m,), device="cuda")
    result = refmatch.match(query, reference, labels, metric=metric, backend="cuda")
    assert_matches_oracle(result, query, reference, metric, labels=labels)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_tf32_follows_matmul_precision(metric):
    query, reference = torch.randn(257, 96, device="cuda"), torch.randn(517, 96, device="cuda")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        result = match_cuda(query, reference, metric)
    finally:
        torch.set_float32_matmul_precision(previous)
    tol = tolerance(query, reference, metric, operands_rounded_to=torch.float16)
    exact = topk_oracle(query, reference, metric)[:, 0]
    picked = dense_scores(query, reference, metric).gather(1, result.index.cpu()[:, None])[:, 0]
    torch.testing.assert_close(picked, exact, atol=tol, rtol=0)
    torch.testing.assert_close(result.score.double().cpu(), exact, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_strided_maps_match_oracle(dtype, metric):
    # channels-last maps, sliced in W: read through strides, never made contiguous.
    maps = torch.randn(2, 20, 5, 9, device="cuda").to(dtype).to(memory_format=torch.channels_last)[..., 1:8]
    reference = torch.randn(45, 20, device="cuda").to(dtype)
    result = match_cuda(maps, reference, metric)
    assert result.index.shape == (2, 5, 7)
    assert_matches_oracle(result, maps, reference, metric)


def test_nchw_maps_match_oracle():
    maps = torch.randn(3, 64, 17, 19, device="cuda").half()
    reference = torch.randn(300, 64, device="cuda").half()
    assert_matches_oracle(match_cuda(maps, reference, "cosine"), maps, reference, "cosine")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_reference_layouts_without_cp_async(dtype):
    query = torch.randn(50, 40, device="cuda").to(dtype)
    transposed = torch.randn(40, 90, device="cuda").to(dtype).T  # stride in D is 90: element loads
    offset = torch.randn(91 * 40 + 1, device="cuda").to(dtype)[1:].view(91, 40)  # base off by one element
    for reference in (transposed, offset):
        assert_matches_oracle(match_cuda(query, reference), query, reference, "dot")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_ties_keep_lowest_index_across_tiles_and_splits(dtype, splits):
    reference = torch.randn(3 * BLOCK_M + 22, 16, device="cuda").to(dtype)
    tied = [37, BLOCK_M + 6, 2 * BLOCK_M + 12]  # identical best rows in different tiles and splits
    reference[tied] = 3.0
    reference[[40, 41]] = 3.0  # and inside one tile, after the first
    query = torch.ones(40, 16, device="cuda").to(dtype)
    score, index = raw_argmax(query, reference, splits=splits)
    assert (index == 37).all() and (score == 48.0).all()


def test_nan_never_wins_and_empty_rows_get_minus_one():
    query = torch.randn(20, 32, device="cuda")
    reference = torch.randn(150, 32, device="cuda")
    reference[3] = float("nan")
    query[5] = float("nan")  # every score of this row is NaN
    keep = torch.arange(20, device="cuda") != 5
    for metric in ("dot", "l2"):
        result = match_cuda(query, reference, metric)
        assert result.index[5] == -1
        assert result.score[5] == (float("inf") if metric == "l2" else float("-inf"))
        scores = oriented(dense_scores(query[keep], reference, metric), metric)
        scores[:, 3] = float("-inf")  # the NaN reference row never wins
        picked = scores.gather(1, result.index[keep].cpu()[:, None])[:, 0]
        torch.testing.assert_close(picked, scores.max(1).values, atol=1e-3, rtol=0)


def test_many_splits_fill_the_device_for_few_rows():
    query = torch.randn(100, 64, device="cuda").bfloat16()
    reference = torch.randn(200_000, 64, device="cuda").bfloat16()
    from refmatch import _C
    splits = _C.match_splits(100, 200_000, 64, 2, False, query.device.index, reference.data_ptr(), *reference.stride())
    assert splits > 1
    assert_matches_oracle(match_cuda(query, reference), query, reference, "dot")


def test_streamed_query_for_wide_rows():
    query = torch.randn(130, 1000, device="cuda").bfloat16()  # too wide to stay in shared memory
    reference = torch.randn(200, 1000, device="cuda").bfloat16()
    assert_matches_oracle(match_cuda(query, reference, "cosine"), query, reference, "cosine")


def test_runs_on_the_device_of_its_inputs():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    query, reference = torch.randn(70, 32, device="cuda:1"), torch.randn(90, 32, device="cuda:1")
    with torch.cuda.device(0):
        result = match_cuda(query, reference)
    assert result.index.device == torch.device("cuda:1")
    assert_matches_oracle(result, query, reference, "dot")


def test_a_failed_call_leaves_no_error_for_the_next_launch():
    """The extension's static CUDA runtime records a failed call's error; the check after the
    next launch must name that launch's own status, not the stale one."""
    from refmatch.backends.cuda_backend import DTYPE_CODES, native_module

    with pytest.raises(RuntimeError, match="cudaSetDevice"):  # an ordinal past the last device
        native_module().match_splits(64, 300, 32, DTYPE_CODES[torch.float32], False, torch.cuda.device_count(),
                                     0, 32, 1, 0, 1)
    query, reference = torch.randn(64, 32, device="cuda"), torch.randn(300, 32, device="cuda")
    assert_matches_oracle(match_cuda(query, reference), query, reference, "dot")


def test_capturable_in_a_cuda_graph():
    query = torch.randn(64, 48, device="cuda").half()
    reference = torch.randn(4000, 48, device="cuda").half()
    expected = match_cuda(query, reference).index.clone()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        match_cuda(query, reference)  # warm-up on the capture stream
        with torch.cuda.graph(graph, stream=stream):
            captured = match_cuda(query, reference).index
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, expected)


def test_compiles_with_fullgraph():
    """torch.compile(fullgraph=True) around backend="cuda": the backend's probes are constants
    to Dynamo (it could not trace their pybind calls); the op itself is opaque."""
    query = torch.randn(2, 64, 8, 8, device="cuda").bfloat16()
    reference = torch.randn(3000, 64, device="cuda").bfloat16()
    compiled = torch.compile(lambda q, r: refmatch.match(q, r, backend="cuda").index, fullgraph=True,
                             backend="aot_eager")
    assert torch.equal(compiled(query, reference), refmatch.match(query, reference, backend="cuda").index)


def test_agrees_with_triton():
    query = torch.randn(500, 128, device="cuda").bfloat16()
    reference = torch.randn(3000, 128, device="cuda").bfloat16()
    mine = match_cuda(query, reference, "cosine")
    theirs = refmatch.match(query, reference, metric="cosine", backend="triton")
    exact = oriented(dense_scores(query, reference, "cosine"), "cosine")
    picked_mine = exact.gather(1, mine.index.cpu()[:, None])
    picked_theirs = exact.gather(1, theirs.index.cpu()[:, None])
    torch.testing.assert_close(picked_mine, picked_theirs, atol=tolerance(query, reference, "cosine"), rtol=0)


def test_declines_with_reasons():
    query, reference = torch.randn(4, 8, device="cuda"), torch.randn(9, 8, device="cuda")
    with pytest.raises(ValueError, match="float64"):
        match_cuda(query.double(), reference.double())
    with pytest.raises(ValueError, match="CUDA tensors"):
        match_cuda(query.cpu(), reference.cpu())


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_infinite_and_huge_float32_inputs(precision):
    # 3xTF32 once split inf into inf + NaN and rounded values near FLT_MAX up to inf.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        reference = torch.rand(40, 8, device="cuda")
        reference[7, 3] = float("inf")
        query = torch.rand(3, 8, device="cuda") + 0.5
        result = match_cuda(query, reference)
        assert (result.index == 7).all() and (result.score == float("inf")).all()
        if precision == "highest":  # plain TF32 cannot hold FLT_MAX; 3xTF32 must
            huge = torch.full((2, 4), torch.finfo(torch.float32).max, device="cuda")
            found = match_cuda(torch.full((1, 4), 2.0 ** -100, device="cuda"), huge)
            assert torch.isfinite(found.score).all() and (found.index == 0).all()
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.xfail(strict=True, reason="known (README, cuda backend): 3xTF32 multiplies the small part of a "
                   "TF32-exact value, 0, by an infinite big part, so the +inf dot product comes out NaN; zeroing "
                   "infinities in the correction products spilled the kernel's registers")
@pytest.mark.parametrize("side", ["reference", "query"])
def test_infinite_float32_against_tf32_exact_values_at_highest_precision(side):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        exact = torch.randint(1, 4, (40, 8), device="cuda").float()  # integers: small parts are 0
        ones = torch.ones(2, 8, device="cuda")
        query, reference = (ones, exact) if side == "reference" else (exact[:2].clone(), ones.repeat(20, 1))
        (reference if side == "reference" else query)[:, 3] = float("inf")
        result = match_cuda(query, reference)
        assert (result.score == float("inf")).all() and (result.index == 0).all()
    finally:
        torch.set_float32_matmul_precision(previous)
