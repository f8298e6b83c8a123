"""The fused Triton kernel against the float64 oracle.

Without a GPU it runs under TRITON_INTERPRET=1 (set by conftest), so sizes stay small, and
bfloat16 cases run the kernel on float32 copies (the interpreter computes bfloat16 dots wrongly,
``triton_backend._kernel_inputs``): the bfloat16 kernel itself is checked on a GPU only.
"""
import pytest
import torch

import refmatch
from conftest import DEVICE, HAS_CUDA, INTERPRETING
from oracle import assert_matches_oracle

pytestmark = pytest.mark.skipif(not (HAS_CUDA or INTERPRETING),
                                reason="needs a CUDA device or TRITON_INTERPRET=1")
# D = 100: float32 needs the shared-memory ladder on a GPU (match_tiles)
SHAPES = [(1, 1, 1), (7, 33, 257), (33, 70, 7), (70, 7, 33), (9, 40, 100)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("n, m, d", SHAPES)
def test_rows_match_oracle(dtype, metric, n, m, d):
    query = torch.randn(n, d, device=DEVICE).to(dtype)
    reference = torch.randn(m, d, device=DEVICE).to(dtype)
    labels = torch.randint(0, 3, (m,), device=DEVICE)
    result = refmatch.match(query, reference, labels, metric=metric, backend="triton")
    assert_matches_oracle(result, query, reference, metric, labels=labels)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_strided_maps_match_oracle(metric, monkeypatch):
    # channels-last maps, sliced in W: read through strides, never made contiguous.
    from refmatch.kernels import match_launch as kernels

    maps = torch.randn(2, 20, 5, 9, device=DEVICE).to(memory_format=torch.channels_last)[..., 1:8]
    reference = torch.randn(45, 20, device=DEVICE)
    launched, match_topk = [], kernels.match_topk
    monkeypatch.setattr(kernels, "match_topk", lambda query, *args: launched.append(query) or match_topk(query, *args))
    result = refmatch.match(maps, reference, metric=metric, backend="triton")
    assert [(query.data_ptr(), query.stride()) for query in launched] == [(maps.data_ptr(), maps.stride())]
    assert result.index.shape == (2, 5, 7)
    assert_matches_oracle(result, maps, reference, metric)


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_split_merge_keeps_lowest_index(splits):
    from refmatch.kernels.match_launch import match_topk

    reference = torch.randn(150, 16, device=DEVICE)
    reference[[37, 70, 140]] = 3.0  # identical best rows in different tiles and splits
    query = torch.ones(40, 16, device=DEVICE)
    stat = torch.empty(0, device=DEVICE)
    score, index = match_topk(query.T[None, :, :, None], reference, stat, "dot", 1, splits=splits, block_m=16)
    assert (index == 37).all() and (score == 48.0).all() and index.shape == (40, 1)


def record_launches(monkeypatch):
    """A list that each launch of the Triton kernel appends (splits, {argument: value}, BLOCK_M) to."""
    from refmatch.kernels import match_launch as kernels

    launches, kernel = [], kernels._match_kernel

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **options):
                launches.append((grid[1], dict(zip(kernel.arg_names, args)), options["BLOCK_M"]))
                return kernel[grid](*args, **options)
            return launch

    monkeypatch.setattr(kernels, "_match_kernel", Recording())
    return launches


@pytest.mark.parametrize("num_refs, splits", [(150, 1), (150, 3), (160, 5), (16, 1)])
@pytest.mark.parametrize("k", [1, 3])
def test_reference_terms_cover_every_look_ahead(num_refs, splits, k, monkeypatch):
    """The kernel loads the next tile's per-reference term unmasked (see its header); the
    launcher pads the term so that a split's loads, a tile past its last tile, stay inside.
    Read from each launch's arguments: the interpreter reads past an end without a word."""
    from refmatch.kernels import match_launch as kernels

    launches = record_launches(monkeypatch)
    reference = torch.randn(num_refs, 8, device=DEVICE)
    stat = reference.square().sum(dim=1)
    kernels.match_topk(torch.randn(8, 5, device=DEVICE)[None, :, :, None], reference, stat, "l2", k,
                       splits=splits, block_m=16)
    (launched_splits, arguments, block_m), = launches
    assert launched_splits == splits
    refs_per_split = arguments["refs_per_split"]
    for split in range(splits):
        begin = split * refs_per_split
        last_tile = begin + (min(begin + refs_per_split, num_refs) - begin - 1) // block_m * block_m
        assert arguments["ref_stat_ptr"].numel() >= last_tile + 2 * block_m


@pytest.mark.parametrize("k", [1, 3])
def test_indices_are_offsets_into_splits_of_at_most_max_split_refs(k, monkeypatch):
    """Kept indices are int32 offsets from a split's start; the launcher adds splits so that
    none spans MAX_SPLIT_REFS rows (2^30; 32 here, so a 150-row bank takes 5 splits)."""
    from refmatch.kernels import match_launch as kernels

    monkeypatch.setattr(kernels, "MAX_SPLIT_REFS", 32)
    launches = record_launches(monkeypatch)
    reference = torch.randn(150, 8, device=DEVICE)
    reference[[20, 97, 149]] *= 10  # best rows in the first, a middle and the last split
    query = torch.cat([reference[[20, 97, 149]], torch.randn(4, 8, device=DEVICE)])
    stat = torch.empty(0, device=DEVICE)
    score, index = kernels.match_topk(query.T[None, :, :, None], reference, stat, "dot", k, splits=1, block_m=16)
    expected = (query @ reference.T).topk(k, dim=1)
    assert [(splits, arguments["refs_per_split"]) for splits, arguments, _ in launches] == [(5, 32)]
    assert torch.equal(index.cpu(), expected.indices.cpu())
    torch.testing.assert_close(score, expected.values)


def test_wide_rows_loop_over_channel_chunks():
    query = torch.randn(20, 300, device=DEVICE)  # D > MAX_RESIDENT_D: not held in registers
    reference = torch.randn(40, 300, device=DEVICE)
    result = refmatch.match(query, reference, metric="dot", backend="triton")
    assert_matches_oracle(result, query, reference, "dot")


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("k", [2, 8, 64])
def test_topk_matches_oracle(metric, k):
    query = torch.randn(37, 12, device=DEVICE)
    reference = torch.randn(150, 12, device=DEVICE)
    result = refmatch.match(query, reference, k=k, metric=metric, backend="triton")
    assert result.index.shape == (37, k)
    assert_matches_oracle(result, query, reference, metric, k=k)


@pytest.mark.parametrize("splits", [1, 3])
def test_topk_ties_keep_lowest_indices_across_tiles_and_splits(splits):
    from refmatch.kernels.match_launch import match_topk

    reference = torch.randn(150, 16, device=DEVICE)
    reference[[140, 37, 70, 5, 100]] = 3.0  # five identical best rows
    query = torch.ones(40, 16, device=DEVICE)
    stat = torch.empty(0, device=DEVICE)
    score, index = match_topk(query.T[None, :, :, None], reference, stat, "dot", 4, splits=splits, block_m=16)
    assert (index == torch.tensor([5, 37, 70, 100], device=DEVICE)).all() and (score == 48.0).all()


@pytest.mark.parametrize("best, expected", [
    ({0: 0.25, 32: 1.25, 33: 1.25}, [32, 33]),  # a tie across a list the merge must put in index order
    ({0: 1.25, 1: 1.25, 32: 2.25}, [32, 0]),    # a full list evicts the higher index of its tied worst
])
def test_topk_ties_in_lists_and_merges_keep_lowest_indices(best, expected):
    reference = -torch.ones(40, 4, device=DEVICE)
    for row, value in best.items():
        reference[row] = value
    found = refmatch.match(torch.ones(1, 4, device=DEVICE), reference, k=2, metric="dot", backend="triton")
    assert found.index.tolist() == [expected]


def test_topk_beyond_the_finite_references_is_minus_one():
    reference = torch.randn(6, 8, device=DEVICE)
    reference[[1, 4]] = float("nan")
    result = refmatch.match(torch.randn(3, 8, device=DEVICE), reference, k=6, metric="dot", backend="triton")
    assert (result.index[:, 4:] == -1).all() and (result.score[:, 4:] == float("-inf")).all()
    assert sorted(result.index[0, :4].tolist()) == [0, 2, 3, 5]


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_nan_references_in_full_tiles_never_enter_a_topk(metric):
    # 256 rows fill whole tiles, where the kernel leaves NaN to maxnum instead of masking it.
    reference = torch.randn(256, 8, device=DEVICE)
    reference[::3] = float("nan")
    query = torch.randn(5, 8, device=DEVICE)
    result = refmatch.match(query, reference, k=4, metric=metric, backend="triton")
    finite = torch.arange(256, device=DEVICE) % 3 != 0
    expected = refmatch.match(query, reference[finite], k=4, metric=metric, backend="torch")
    assert result.index.tolist() == finite.nonzero()[:, 0][expected.index].tolist()


def test_declines_large_k_and_float64_with_reasons():
    query, reference = torch.randn(4, 8, device=DEVICE), torch.randn(90, 8, device=DEVICE)
    with pytest.raises(ValueError, match="at most k=64"):
        refmatch.match(query, reference, k=65, backend="triton")
    with pytest.raises(ValueError, match="float64"):
        refmatch.match(query.double(), reference.double(), backend="triton")


def test_runs_on_the_device_of_its_inputs():
    """Triton launches on the current device: the launcher makes it the inputs' device."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    query, reference = torch.randn(70, 32, device="cuda:1"), torch.randn(90, 32, device="cuda:1")
    with torch.cuda.device(0):
        result = refmatch.match(query, reference, metric="dot", backend="triton")
    assert result.index.device == torch.device("cuda:1")
    assert_matches_oracle(result, query, reference, "dot")


def test_inputs_spanning_two_to_the_31_elements_take_int64_strides():
    """A transposed bank view puts channel d at d * M elements: at D = 128, past int32 from
    M = 2^31 / 127 rows on. Such inputs (meta tensors here: no memory) switch the kernel's
    stride products to int64; the bound is the last channel a tile loads, not its padding."""
    from refmatch.kernels.match_launch import needs_wide_offsets

    maps = torch.empty(1, 128, 64, 64, device="meta")
    assert not needs_wide_offsets(maps, torch.empty(1 << 20, 128, device="meta"))
    assert not needs_wide_offsets(maps, torch.empty(128, 1 << 24, device="meta").T)  # 127 * 2^24 < 2^31
    assert needs_wide_offsets(maps, torch.empty(128, (1 << 24) + (1 << 20), device="meta").T)
    bank = torch.empty(4096, 64, device="meta")
    assert needs_wide_offsets(torch.empty(1, 64, 6000, 6000, device="meta"), bank)  # NCHW, 36M pixels
    assert not needs_wide_offsets(torch.empty(1, 64, 4096, 4096, device="meta"), bank)  # 63 * 2^24 < 2^31
    channels_last = torch.empty(1, 64, 6000, 6000, device="meta").to(memory_format=torch.channels_last)
    assert not needs_wide_offsets(channels_last, bank)


@pytest.mark.parametrize("metric, dim", [("cosine", 20), ("l2", 20), ("l2", 130)])  # 130: a streamed query
def test_wide_offsets_give_the_same_matches(metric, dim, monkeypatch):
    """The int64 stride path of the kernel, forced on small strided inputs, returns what the
    int32 path does, and matches the oracle."""
    from refmatch.kernels import match_launch as kernels

    maps = torch.randn(2, dim, 5, 9, device=DEVICE)[..., 1:8]
    reference = torch.randn(dim, 45, device=DEVICE).T  # a transposed view
    plain = [refmatch.match(maps, reference, k=k, metric=metric, backend="triton") for k in (1, 3)]
    monkeypatch.setattr(kernels, "needs_wide_offsets", lambda query, reference: True)
    wide = [refmatch.match(maps, reference, k=k, metric=metric, backend="triton") for k in (1, 3)]
    for expected, result in zip(plain, wide):
        assert torch.equal(result.index, expected.index) and torch.equal(result.score, expected.score)
    assert_matches_oracle(wide[0], maps, reference, metric)
