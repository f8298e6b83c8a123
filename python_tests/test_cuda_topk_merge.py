"""The CUDA top-k's Python side on the CPU: buffer shapes, the split merge and
the tie rule across splits, with the kernel replaced by a dense stand-in that
writes what the kernel promises (each split's sorted list, (-inf, -1) past the
finite scores)."""
import pytest
import torch

from refmatch.backends import cuda_backend, cuda_topk


def fake_kernel(query, reference, ref_stat, metric, out_score, out_index, *, splits, k, **_):
    rows = query[0, :, :, 0].T.double()
    scores = rows @ reference.double().T
    scores[:, torch.isnan(ref_stat)] = float("-inf")  # NaN marks a reference that never matches
    per_split = -(-reference.shape[0] // splits)
    for split in range(splits):
        block = scores[:, split * per_split:(split + 1) * per_split]
        index = torch.arange(block.shape[1]).expand_as(block) + split * per_split
        order = torch.sort(block, dim=1, descending=True, stable=True).indices[:, :k]
        found = block.gather(1, order)
        out_score[split, :, :found.shape[1]] = found.float()
        out_index[split, :, :found.shape[1]] = torch.where(found > float("-inf"), index.gather(1, order), -1)
        out_score[split, :, found.shape[1]:] = float("-inf")
        out_index[split, :, found.shape[1]:] = -1


@pytest.fixture(autouse=True)
def stand_in_kernel(monkeypatch):
    monkeypatch.setattr(cuda_backend, "run_kernel", fake_kernel)


@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("k", [2, 8])
def test_merged_lists_equal_one_list_over_the_bank(splits, k):
    reference = torch.randint(-2, 3, (41, 6)).float()  # many exact ties
    reference[[3, 30]] = float("nan")
    query = torch.randint(-2, 3, (9, 6)).float()
    stat = torch.zeros(41)
    stat[[3, 30]] = float("nan")
    score, index = cuda_topk.match_topk_cuda(query.T[None, :, :, None], reference, stat, "dot", k, splits=splits)
    expected_score, expected_index = cuda_topk.match_topk_cuda(query.T[None, :, :, None], reference, stat, "dot", k,
                                                               splits=1)
    assert score.shape == index.shape == (9, k)
    assert torch.equal(score, expected_score) and torch.equal(index, expected_index)
    dense = torch.where(torch.isnan(stat)[None], float("-inf"), query @ reference.T)
    for row in range(9):  # best first, equal scores in index order, NaN references never listed
        order = sorted(range(41), key=lambda column: (-dense[row, column].item(), column))[:k]
        assert index[row].tolist() == order and 3 not in order and 30 not in order


def test_rejects_k_outside_the_kernel():
    query, reference = torch.zeros(1, 4, 3, 1), torch.zeros(5, 4)
    for k in (1, 65):
        with pytest.raises(ValueError, match="2 <= k <= 64"):
            cuda_topk.match_topk_cuda(query, reference, torch.zeros(5), "dot", k, splits=1)
