"""Metric bookkeeping shared by the backends.

Kernels rank by an oriented score where larger is better and only the per-row
terms are left out: q.r (dot), q.r/|r| (cosine) and 2 q.r - |r|^2 (l2). The
per-row fix-up turns that into the public score.
"""
import torch

METRICS = ("cosine", "dot", "l2")
NORM_EPS = 1e-12  # as torch.nn.functional.normalize: zero vectors score 0


def accumulation_dtype(dtype):
    """float64 inputs (the oracle) stay float64; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_stat(reference, metric):
    """Per-reference term [M]: 1/|r| (cosine), |r|^2 (l2), or an empty tensor (dot)."""
    acc = accumulation_dtype(reference.dtype)
    if metric == "dot":
        return reference.new_empty(0, dtype=acc)
    norm = torch.linalg.vector_norm(reference, dim=1, dtype=acc)
    return norm.clamp_min(NORM_EPS).reciprocal() if metric == "cosine" else norm.square()


def finalize_scores(oriented, index, query, metric):
    """Public scores from oriented ones.

    Args:
        oriented: [N, k] oriented scores.
        index: [N, k] int64, -1 where nothing matched.
        query: [B, D, H, W] maps the N rows came from.
    Returns:
        [N, k]: similarity (cosine, dot) or squared distance (l2); rows without a
        match hold -inf (cosine, dot) or +inf (l2).
    """
    if metric == "dot":
        score = oriented
    else:
        norm = torch.linalg.vector_norm(query, dim=1, dtype=oriented.dtype).reshape(-1, 1)
        score = oriented / norm.clamp_min(NORM_EPS) if metric == "cosine" else norm.square() - oriented
    worst = float("inf") if metric == "l2" else float("-inf")
    return torch.where(index < 0, torch.full_like(score, worst), score)
