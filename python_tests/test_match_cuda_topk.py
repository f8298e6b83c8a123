"""The CUDA top-k (k = 2 .. 64) against the float64 oracle. Needs a GPU (sm_80+). On sm_90
with an sm_90a build every test runs three times: on the mma.sync kernel, and on the wgmma kernel
(REFMATCH_CUDA_HOPPER_TOPK=wgmma; its default variant) with its lists in shared memory where they
fit and in the outputs throughout (REFMATCH_CUDA_HOPPER_TOPK_LISTS=global), unless
REFMATCH_TEST_HOPPER_TOPK=0 (gpu_suite.sh: its first check did not pass) or REFMATCH_CUDA_HOPPER=0."""
import os

import pytest
import torch

import refmatch
from conftest import hopper_build_and_device
from oracle import assert_matches_oracle, tolerance
from refmatch.backends.hopper_variants import hopper_switched_off, hopper_topk_kernel, hopper_topk_lists

pytestmark = pytest.mark.cuda
BLOCK_M = 64  # reference rows per mma.sync tile (the wgmma kernel's are 128: these cross both)
WGMMA_TESTED = (os.environ.get("REFMATCH_TEST_HOPPER_TOPK", "1") == "1" and hopper_build_and_device()
                and not hopper_switched_off())  # REFMATCH_CUDA_HOPPER=0 keeps every call on mma.sync


@pytest.fixture(autouse=True, params=["mma.sync", "wgmma", "wgmma-global"] if WGMMA_TESTED else ["mma.sync"])
def topk_kernel(request):
    kernel, _, lists = request.param.partition("-")
    with hopper_topk_kernel(kernel), hopper_topk_lists(lists or "shared"):
        yield kernel


def topk_cuda(query, reference, metric="dot", k=8, **kwargs):
    return refmatch.match(query, reference, k=k, metric=metric, backend="cuda", **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("k", [2, 8, 64])
@pytest.mark.parametrize("n, m, d", [(7, 70, 33), (130, 1000, 128), (300, 3 * BLOCK_M + 5, 72)])
def test_rows_match_oracle(dtype, metric, k, n, m, d):
    query = torch.randn(n, d, device="cuda").to(dtype)
    reference = torch.randn(m, d, device="cuda").to(dtype)
    result = topk_cuda(query, reference, metric, k)
    assert result.index.shape == (n, k)
    assert_matches_oracle(result, query, reference, metric, k=k)


@pytest.mark.parametrize("splits", [1, 2, 3, 7])
def test_ties_keep_lowest_indices_across_tiles_and_splits(splits):
    from refmatch.backends.cuda_topk import match_topk_cuda

    reference = torch.randn(3 * BLOCK_M + 22, 16, device="cuda").half()
    tied = [3 * BLOCK_M + 2, 37, BLOCK_M + 6, 5, 2 * BLOCK_M + 12, 40]  # in one tile, across tiles and splits
    reference[tied] = 3.0
    query = torch.ones(40, 16, device="cuda").half()
    score, index = match_topk_cuda(query.T[None, :, :, None], reference, torch.empty(0, device="cuda"), "dot", 5,
                                   splits=splits)
    assert (index == torch.tensor(sorted(tied)[:5], device="cuda")).all() and (score == 48.0).all()


def test_wgmma_topk_runs_where_asked(topk_kernel):
    from refmatch.backends.cuda_backend import kernel_name

    if topk_kernel != "wgmma":
        pytest.skip("the wgmma kernel's own check")
    maps = torch.randn(1, 128, 4, 4, device="cuda").bfloat16()
    reference = torch.randn(300, 128, device="cuda").bfloat16()
    assert kernel_name(maps, reference, 8) == kernel_name(maps, reference) == "wgmma-256-tma"  # the k = 1 tiles
    assert kernel_name(maps.float(), reference.float(), 8) == "mma.sync"


def test_beyond_the_finite_references_is_minus_one():
    reference = torch.randn(6, 8, device="cuda")
    reference[[1, 4]] = float("nan")
    result = topk_cuda(torch.randn(3, 8, device="cuda"), reference, k=6)
    assert (result.index[:, 4:] == -1).all() and (result.score[:, 4:] == float("-inf")).all()
    assert sorted(result.index[0, :4].tolist()) == [0, 2, 3, 5]


def test_maps_ignore_index_and_graph_capture():
    maps = torch.randn(2, 24, 5, 9, device="cuda").bfloat16().to(memory_format=torch.channels_last)[..., 1:8]
    reference = torch.randn(500, 24, device="cuda").bfloat16()
    labels = torch.randint(0, 4, (500,), device="cuda")
    labels[::3] = 255
    kept = labels != 255
    result = topk_cuda(maps, reference, "cosine", 8, labels=labels, ignore_index=255)
    assert result.index.shape == (2, 8, 5, 7) and (result.index >= 0).all() and kept[result.index.flatten()].all()
    expected = refmatch.match(maps.double(), reference[kept].double(), labels[kept], k=8, metric="cosine",
                              backend="torch")
    torch.testing.assert_close(result.score.double().cpu(), expected.score.cpu(), rtol=0,
                               atol=tolerance(maps, reference[kept], "cosine", k=8))
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        topk_cuda(maps, reference, k=8)
        with torch.cuda.graph(graph, stream=stream):
            captured = topk_cuda(maps, reference, k=8)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.index, topk_cuda(maps, reference, k=8).index)


def test_declines_large_k_with_a_reason():
    query, reference = torch.randn(4, 8, device="cuda"), torch.randn(90, 8, device="cuda")
    with pytest.raises(ValueError, match="at most k=64"):
        topk_cuda(query, reference, k=65)
