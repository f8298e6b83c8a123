"""The Hopper (wgmma) CUDA kernel against the float64 oracle, in each variant
(``hopper_variants.HOPPER_VARIANTS``, the test ids: wgmma-256-tma, wgmma-tma,
wgmma-256-rs-tma, wgmma-rs-tma and each without -tma: 256 or 128 query rows per CTA, the
query in shared memory or in registers, the bank loaded by TMA or cp.async; wgmma-256-tma,
the default, runs wgmma-tma's kernel above D = 192), or in those
REFMATCH_TEST_HOPPER_VARIANTS names (gpu_suite.sh: the ones that passed their first
check). Needs a compute capability 9.0 GPU and a build with sm_90a, where it is the
default."""
import os

import pytest
import torch

import refmatch
from conftest import hopper_build_and_device
from oracle import assert_matches_oracle, tolerance
from refmatch.backends.hopper_variants import (HOPPER_VARIANTS, SETTINGS, documented_hopper_kernel, hopper_kernel,
                                               hopper_topk_kernel)

BLOCK_M = 128  # reference rows per tile (refmatch._C.hopper_layout()["block_m"])


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not hopper_build_and_device(),
                                                   reason="needs an sm_90 GPU and a build with sm_90a")]


TESTED_VARIANTS = os.environ.get("REFMATCH_TEST_HOPPER_VARIANTS", " ".join(HOPPER_VARIANTS)).split()
assert set(TESTED_VARIANTS) <= set(HOPPER_VARIANTS), f"REFMATCH_TEST_HOPPER_VARIANTS: {TESTED_VARIANTS}"


@pytest.fixture(autouse=True, params=TESTED_VARIANTS)
def wgmma_variant(request):
    with hopper_kernel(request.param):
        yield


def current_variant():
    """The variant the autouse fixture set."""
    setting = tuple(os.environ[name] for name in SETTINGS)
    return next(name for name, value in HOPPER_VARIANTS.items() if tuple(map(str, value)) == setting)


def skip_unless_first_to_run(dim):
    """The kernel the current variant runs at D = dim; skips a call that an earlier tested
    variant runs on the same kernel, or whose kernel is not tested here (wgmma-256-rs above
    D = 192 runs wgmma-rs's, which gpu_suite leaves out when its check failed)."""
    names, current = TESTED_VARIANTS, current_variant()
    kernel = documented_hopper_kernel(current, dim)
    if kernel not in names:
        pytest.skip(f"D={dim} runs {kernel}, which is not among the tested variants {names}")
    covered = [name for name in names[:names.index(current)] if documented_hopper_kernel(name, dim) == kernel]
    if covered:
        pytest.skip(f"D={dim} runs {kernel}, tested as {covered[0]}")
    return kernel


def run_hopper(query, reference, metric="dot", **kwargs):
    """``match`` on the cuda backend after checking that the documented kernel runs. A call
    that an earlier tested variant runs on the same kernel (wgmma-256-rs above D = 64, say)
    is skipped: it keeps the GPU suite's test stage short."""
    from refmatch.backends.cuda_backend import kernel_name

    maps = query.T[None, :, :, None] if query.dim() == 2 else query
    kernel = skip_unless_first_to_run(maps.shape[1])
    assert kernel_name(maps, reference) == kernel
    return refmatch.match(query, reference, metric=metric, backend="cuda", **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("n, m, d", [(1, 1, 8), (127, 129, 64), (129, 1000, 128), (300, 5000, 72), (64, 257, 200),
                                     (257, 700, 256), (33, 3 * BLOCK_M, 16), (700, 900, 192), (300, 700, 64)])
def test_rows_match_oracle(dtype, metric, n, m, d):
    query = torch.randn(n, d, device="cuda").to(dtype)
    reference = torch.randn(m, d, device="cuda").to(dtype)
    labels = torch.randint(0, 3, (m,), device="cuda")
    assert_matches_oracle(run_hopper(query, reference, metric, labels=labels), query, reference, metric,
                          labels=labels)


@pytest.mark.parametrize("k", [2, 8, 64])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_topk_in_the_variants_that_run_it(metric, k):
    """Top-k on the wgmma kernel (REFMATCH_CUDA_HOPPER_TOPK=wgmma) in every variant that runs at
    D = 72: three tiles with a tail, CTAs of rows with padding, two chunks of D."""
    from refmatch.backends.cuda_backend import kernel_name

    if os.environ.get("REFMATCH_TEST_HOPPER_TOPK", "1") != "1":
        pytest.skip("REFMATCH_TEST_HOPPER_TOPK=0: the wgmma top-k failed its check (gpu_suite.sh)")
    variant = current_variant()
    if documented_hopper_kernel(variant, 72) != variant:
        pytest.skip(f"D = 72 runs {documented_hopper_kernel(variant, 72)}, tested as that variant")
    query = torch.randn(300, 72, device="cuda").bfloat16()
    reference = torch.randn(3 * BLOCK_M + 5, 72, device="cuda").bfloat16()
    with hopper_topk_kernel("wgmma"):
        assert kernel_name(query.T[None, :, :, None], reference, k) == variant
        result = refmatch.match(query, reference, k=k, metric=metric, backend="cuda")
    assert_matches_oracle(result, query, reference, metric, k=k)


@pytest.mark.parametrize("dim, dtype, aligned, expected", [
    (128, torch.bfloat16, True, "wgmma"), (256, torch.float16, True, "wgmma"),
    (264, torch.bfloat16, True, "mma.sync"),   # query tile would not stay resident
    (36, torch.bfloat16, True, "mma.sync"),    # D not a whole number of 16-byte units
    (128, torch.float32, True, "mma.sync"),    # fp32 stays on mma.sync
    (128, torch.bfloat16, False, "mma.sync"),  # reference rows not 16-byte aligned
])
def test_kernel_choice(dim, dtype, aligned, expected):
    from refmatch.backends.cuda_backend import kernel_name

    query = torch.randn(1, dim, 4, 4, device="cuda").to(dtype)
    bank = torch.randn(41 * dim + 1, device="cuda").to(dtype)
    reference = bank[:-1].view(41, dim) if aligned else bank[1:].view(41, dim)
    if expected == "wgmma":
        expected = documented_hopper_kernel(current_variant(), dim)
    assert kernel_name(query, reference) == expected  # in every variant; the launch below only once
    if expected != "mma.sync":
        skip_unless_first_to_run(dim)
    assert_matches_oracle(refmatch.match(query, reference, backend="cuda"), query, reference, "cosine")


@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_ties_keep_lowest_index_across_tiles_and_splits(splits):
    from refmatch.backends.cuda_backend import match_argmax_cuda
    from refmatch.backends.scoring import reference_stat

    reference = torch.randn(3 * BLOCK_M + 22, 16, device="cuda").bfloat16()
    reference[[37, BLOCK_M + 6, 2 * BLOCK_M + 12, 40, 41]] = 3.0  # ties across tiles, splits, inside a tile
    query = torch.ones(300, 16, device="cuda").bfloat16()  # every row block of both consumers, two CTAs
    score, index = match_argmax_cuda(query.T[None, :, :, None], reference, reference_stat(reference, "dot"),
                                     "dot", splits=splits)
    assert (index == 37).all() and (score == 48.0).all()


@pytest.mark.parametrize("dim", [72, 128])
def test_infinite_and_nan_references_agree_with_torch(dim):
    # Rows with Inf or NaN must not disturb other rows' scores: zeros past D stay zero.
    query = torch.randn(200, dim, device="cuda").half()
    reference = torch.randn(3 * BLOCK_M + 5, dim, device="cuda").half()
    reference[7, 3] = float("inf")
    reference[BLOCK_M + 1, dim - 1] = float("nan")
    reference[2 * BLOCK_M, 0] = float("-inf")
    query[9] = float("nan")
    for metric in ("dot", "l2"):
        fused = run_hopper(query, reference, metric)
        plain = refmatch.match(query.double(), reference.double(), metric=metric, backend="torch")
        assert torch.equal(fused.index.cpu(), plain.index.cpu())


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_bank_rows_read_through_their_stride(metric):
    """A bank of padded rows (row stride 136 > D = 72; TMA: the tensor map's stride), two chunks."""
    query = torch.randn(200, 72, device="cuda").bfloat16()
    reference = torch.randn(1000, 136, device="cuda").bfloat16()[:, :72]
    assert_matches_oracle(run_hopper(query, reference, metric), query, reference, metric)


def test_strided_maps_and_ignore_index():
    # 3 x 13 x 7 = 273 pixels: CTAs' rows cross images, and a 256-row CTA reaches its last row block.
    maps = torch.randn(3, 64, 13, 9, device="cuda").bfloat16().to(memory_format=torch.channels_last)[..., 1:8]
    reference = torch.randn(300, 64, device="cuda").bfloat16()
    labels = torch.randint(0, 4, (300,), device="cuda")
    labels[::5] = 255
    result = run_hopper(maps, reference, "cosine", labels=labels, ignore_index=255)
    kept = labels != 255
    expected = refmatch.match(maps.double(), reference[kept].double(), labels[kept], metric="cosine", backend="torch")
    assert (result.label != 255).all() and kept[result.index.flatten()].all()
    torch.testing.assert_close(result.score.double().cpu(), expected.score.cpu(), rtol=0,
                               atol=tolerance(maps, reference[kept], "cosine"))
    assert_matches_oracle(run_hopper(maps, reference, "l2"), maps, reference, "l2")


def test_many_splits_for_few_rows_and_graph_capture():
    query = torch.randn(100, 64, device="cuda").bfloat16()
    reference = torch.randn(200_000, 64, device="cuda").bfloat16()
    expected = run_hopper(query, reference)
    assert_matches_oracle(expected, query, reference, "dot")
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    with torch.cuda.stream(stream):
        run_hopper(query, reference)
        with torch.cuda.graph(graph, stream=stream):
            captured = run_hopper(query, reference)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.index, expected.index)


def test_ablated_runs_finish_and_other_kernels_refuse_them():
    """bench/ablate_wgmma.py's runs (stages left out, results meaningless) end without a CUDA
    error in every variant; a call the wgmma kernel does not serve refuses them."""
    from refmatch.backends.cuda_backend import launch_match
    from refmatch.backends.scoring import reference_stat

    skip_unless_first_to_run(64)
    query = torch.randn(300, 64, device="cuda").bfloat16().T[None, :, :, None]
    reference = torch.randn(1000, 64, device="cuda").bfloat16()
    for ablate in (1, 2, 3):
        launch_match(query, reference, reference_stat(reference, "l2"), "l2", ablate=ablate)
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="ablate leaves out stages of the wgmma kernel"):
        launch_match(query.float(), reference.float(), reference_stat(reference, "dot"), "dot", ablate=1)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_classwise_max_over_class_ranges(grouped, metric):
    query = torch.randn(150, 128, device="cuda").bfloat16()
    reference = torch.randn(3000, 128, device="cuda").bfloat16()
    labels = torch.randint(0, 5, (3000,), device="cuda")
    if grouped:
        labels = labels.sort().values
    run_hopper(query, reference)  # the kernel these calls take
    scores = refmatch.classwise_max(query, reference, labels, 5, metric=metric, backend="cuda")
    expected = refmatch.classwise_max(query.double(), reference.double(), labels, 5, metric=metric, backend="torch")
    torch.testing.assert_close(scores.double().cpu(), expected.cpu(), rtol=0,
                               atol=tolerance(query, reference, metric))


def test_an_unaligned_bank_is_split_in_the_mma_sync_tiles_it_runs():
    """A bank whose rows are not 16-byte aligned runs the mma.sync kernel; its splits are
    planned in that kernel's tiles (they were planned in wgmma's, which can under-fill the GPU)."""
    from refmatch import _C
    from refmatch.backends.cuda_backend import default_splits, kernel_name

    query = torch.randn(100, 64, device="cuda").bfloat16().T[None, :, :, None]
    unaligned = torch.randn(200_000, 65, device="cuda").bfloat16()[:, :64]  # rows 130 bytes apart
    aligned = unaligned.contiguous()
    assert kernel_name(query, unaligned) == "mma.sync" and kernel_name(query, aligned) == current_variant()
    mma_sync = _C.match_splits(100, 200_000, 64, 2, False, query.device.index, aligned.data_ptr(), *aligned.stride())
    assert default_splits(query, unaligned) == mma_sync
