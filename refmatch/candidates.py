"""Merging ranked match candidates from several sources (class blocks, shards)."""
import torch


def with_k_axis(tensor):
    """[N] / [N, k] / [B, H, W] / [B, k, H, W] -> (tensor with the k axis at dim 1, is_maps)."""
    if tensor.dim() in (1, 3):
        return tensor.unsqueeze(1), tensor.dim() == 3
    return tensor, tensor.dim() == 4


def keep_best(score, k, *companions, larger_wins=True):
    """The k best candidates along dim 1, best first: (score, *companions) gathered alike.

    Candidates with equal scores must come in ascending index order (source by
    source, ascending within each); the stable sort then keeps the lowest-index
    rule across sources. ``larger_wins=False`` for distances.
    """
    order = score.sort(dim=1, descending=larger_wins, stable=True).indices[:, :k]
    return (score.gather(1, order), *(values.gather(1, order) for values in companions))


def pad_by_row(rows, counts, width, score, index):
    """Candidates grouped by row -> (score [N, width], index [N, width]), padded with (-inf, -1).

    ``rows`` [P] ascending (each row's candidates in their given order), ``counts``
    [N] its bincount, ``width`` at least the largest count.
    """
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    padded = score.new_full((counts.numel(), width), float("-inf"))
    padded_index = index.new_full((counts.numel(), width), -1)
    padded[rows, slot], padded_index[rows, slot] = score, index
    return padded, padded_index


def merge_split_lists(partial_score, partial_index):
    """Merge partial top-k lists [S, N, k] of consecutive bank ranges into [N, k], best first.

    Lists may be unsorted (Triton) or sorted (CUDA): sorting by index and then
    stably by score puts equal scores in index order; empty slots hold (-inf, -1)
    and sort last.
    """
    splits, num_rows, k = partial_score.shape
    if splits * k == 1:  # one best per row already
        return partial_score[0], partial_index[0]
    score = partial_score.permute(1, 0, 2).reshape(num_rows, splits * k)
    index = partial_index.permute(1, 0, 2).reshape(num_rows, splits * k)
    by_index = index.argsort(dim=1)
    return keep_best(score.gather(1, by_index), k, index.gather(1, by_index))
