"""Merging ranked match candidates from several sources (class blocks, shards)."""
import torch


def with_k_axis(tensor):
    """[N] / [N, k] / [B, H, W] / [B, k, H, W] -> (tensor with the k axis at dim 1, is_maps)."""
    if tensor.dim() in (1, 3):
        return tensor.unsqueeze(1), tensor.dim() == 3
    return tensor, tensor.dim() == 4


def keep_best(score, index, label, k, metric):
    """The k best candidates along dim 1, best first.

    Candidates must come source by source in ascending index order, each source
    best first with ties by index; a stable sort then keeps the lowest-index rule
    across sources. Scores are similarities (larger wins) or, for "l2", distances.
    """
    order = score.sort(dim=1, descending=metric != "l2", stable=True).indices[:, :k]
    return score.gather(1, order), index.gather(1, order), label.gather(1, order)
