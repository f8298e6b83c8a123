"""Metric bookkeeping shared by the backends.

Kernels rank by an oriented score where larger is better and only the per-row
terms are left out: q.r (dot), q.r/|r| (cosine) and 2 q.r - |r|^2 (l2). The
per-row fix-up turns that into the public score.
"""
import torch

METRICS = ("cosine", "dot", "l2")
NORM_EPS = 1e-12  # as torch.nn.functional.normalize: zero vectors score 0


def host_read_allowed(tensor):
    """False under torch.compile and CUDA graph capture, where reading a tensor's
    values on the host is not allowed."""
    return not (torch.compiler.is_compiling() or (tensor.is_cuda and torch.cuda.is_current_stream_capturing()))


def accumulation_dtype(dtype):
    """float64 inputs (the oracle) stay float64; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def squared_norms(tensor, dim, max_elements=1 << 22):
    """Sum of squares over ``dim`` in the accumulation dtype, flattened to [rows].

    Summed directly rather than as a squared norm, so small integers stay exact;
    converted a chunk at a time along the longest other dimension (rows of [N, D],
    the N of [1, D, N, 1] row maps), so the workspace stays near ``max_elements``
    instead of a float32 copy of the whole input.
    """
    acc = accumulation_dtype(tensor.dtype)
    others = [d for d in range(tensor.dim()) if d != dim]
    if tensor.numel() == 0 or not others:
        return tensor.to(acc).square().sum(dim).reshape(-1)
    along = max(others, key=lambda d: tensor.shape[d])
    chunk = max(1, max_elements * tensor.shape[along] // tensor.numel())
    parts = [part.to(acc).square().sum(dim) for part in tensor.split(chunk, dim=along)]
    return torch.cat(parts, dim=along - (along > dim)).reshape(-1)


def reference_stat(reference, metric):
    """Per-reference term [M]: 1/|r| (cosine), |r|^2 (l2), or an empty tensor (dot)."""
    if metric == "dot":
        return reference.new_empty(0, dtype=accumulation_dtype(reference.dtype))
    norm_sq = squared_norms(reference, dim=1)
    return norm_sq.sqrt().clamp_min(NORM_EPS).reciprocal() if metric == "cosine" else norm_sq


def kernel_metric_and_stat(reference, metric, ignored=None):
    """(metric code for a fused kernel, its per-reference term [M]) with ignored rows folded in.

    An ignored reference gets a NaN term, so its score is NaN and never wins:
    no extra kernel argument and no pass over the bank. "dot" with ignored rows
    runs as "cosine" with a term of 1 (kept) or NaN (ignored).
    """
    if ignored is None:
        return metric, reference_stat(reference, metric)
    if metric == "dot":
        metric, stat = "cosine", torch.ones(reference.shape[0], device=reference.device)
    else:
        stat = reference_stat(reference, metric)
    return metric, stat.masked_fill(ignored, float("nan"))


def finalize_class_scores(oriented, query, metric):
    """Public [N, C] class-wise scores from oriented per-class maxima (-inf: no reference)."""
    return finalize_scores(oriented, torch.where(oriented == float("-inf"), -1, 0), query, metric)


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
        norm_sq = squared_norms(query, dim=1)[:, None]
        score = oriented / norm_sq.sqrt().clamp_min(NORM_EPS) if metric == "cosine" else norm_sq - oriented
    worst = float("inf") if metric == "l2" else float("-inf")
    return torch.where(index < 0, torch.full_like(score, worst), score)
