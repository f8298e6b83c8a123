"""The chunked torch backend against the dense float64 oracle."""
import pytest
import torch

import refmatch
from oracle import DEVICES, assert_matches_oracle
from refmatch.backends.torch_backend import match_chunked

SHAPES = [(1, 1, 1), (7, 33, 257), (257, 7, 33), (33, 257, 7), (257, 257, 64), (1, 257, 33)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
pytestmark = pytest.mark.usefixtures("both_cpu_walks")  # the CPU fused top-k and the torch walk


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("n, m, d", SHAPES)
def test_rows_match_oracle(device, dtype, metric, n, m, d):
    query = torch.randn(n, d, device=device).to(dtype)
    reference = torch.randn(m, d, device=device).to(dtype)
    labels = torch.randint(0, 5, (m,), device=device)
    result = refmatch.match(query, reference, labels, metric=metric, backend="torch")
    assert result.score.shape == (n,) and result.index.dtype == torch.int64
    assert result.score.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_matches_oracle(result, query, reference, metric, labels=labels)


@pytest.mark.torch_walk_only
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("block_m, tile_bytes", [(1, 64), (7, 4 * 7 * 5), (64, 1 << 20)])
def test_many_small_tiles(metric, block_m, tile_bytes):
    # Against the default tiling, which test_rows_match_oracle checks against the oracle.
    query = torch.randn(2, 9, 6, 5)
    reference = torch.randn(83, 9)
    maps = match_chunked(query, reference, None, 1, metric, tile_bytes=tile_bytes, block_m=block_m)
    whole = match_chunked(query, reference, None, 1, metric)
    torch.testing.assert_close(maps, whole)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("k", [2, 5, 33])
def test_topk_matches_oracle(dtype, metric, k):
    query = torch.randn(40, 16).to(dtype)
    reference = torch.randn(70, 16).to(dtype)
    result = refmatch.match(query, reference, k=k, metric=metric, backend="torch")
    assert result.index.shape == (40, k)
    assert_matches_oracle(result, query, reference, metric, k=k)


@pytest.mark.parametrize("block_m", [3, 8, 1000])
def test_topk_ties_are_ordered_by_index(block_m):
    reference = torch.randn(30, 4)
    reference[[4, 11, 12, 25]] = 5.0 * torch.ones(4)  # four identical best rows across tiles
    query = torch.ones(3, 4)
    score, index = match_chunked(query.T[None, :, :, None], reference, None, 6, "dot", block_m=block_m)
    assert index[:, :4].tolist() == [[4, 11, 12, 25]] * 3
    assert (score[:, :4] == 20.0).all()


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_topk_with_many_ties_is_a_stable_sort(k):
    # Small integers tie everywhere; narrow tiles make later tiles merge only the
    # scores that enter (the CPU candidate path), NaN rows included.
    query = torch.randint(-2, 3, (50, 6)).float()
    reference = torch.randint(-2, 3, (700, 6)).float()
    reference[5::7] = float("nan")
    score, index = match_chunked(query.T[None, :, :, None], reference, None, k, "dot", block_m=64,
                                 tile_bytes=4096)
    dense = (query.double() @ reference.double().T).nan_to_num(float("-inf"))
    expected = dense.sort(dim=1, descending=True, stable=True)
    assert torch.equal(index, expected.indices[:, :k])
    assert torch.equal(score.double(), expected.values[:, :k])


def test_l2_lists_sort_by_distance_then_index_over_row_chunks():
    """finalize_scores re-sorts l2 top-k lists by exact distance over row chunks (the whole [N, k]
    sort held 4.7 times the result at k = 4000): by distance, ties by index, unfilled slots last,
    in chunks of one row as in one."""
    from refmatch.backends.scoring import _sort_by_distance

    score = torch.randint(0, 4, (50, 9)).float()  # ties, broken by index
    index = torch.stack([torch.randperm(40)[:9] for _ in range(50)])
    index[::7, -2:] = -1
    expected = [[slot for _, slot in sorted(zip(distances, slots), key=lambda pair: (pair[1] < 0, pair))]
                for distances, slots in zip(score.tolist(), index.tolist())]
    for max_elements in (9, 1 << 22):
        sorted_score, sorted_index = score.clone(), index.clone()
        _sort_by_distance(sorted_score, sorted_index, max_elements=max_elements)
        assert sorted_index.tolist() == expected
        assert (sorted_score[:, 1:] >= sorted_score[:, :-1]).all()
