"""Metric bookkeeping shared by the backends.

Kernels rank by an oriented score where larger is better and only the per-row
terms are left out: q.r (dot), q.r/|r| (cosine) and 2 q.r - |r|^2 (l2). The
per-row fix-up turns that into the public score; l2 distances are recomputed
from the matched rows, since the GEMM form cancels digits (see ``finalize_scores``).
"""
import functools

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..candidates import keep_best

METRICS = ("cosine", "dot", "l2")
NORM_EPS = 1e-12  # as torch.nn.functional.normalize: zero vectors score 0
WORKSPACE_ELEMENTS = 1 << 22  # the most values a norm or distance pass converts at once (16 MiB in float32)


def host_read_allowed(tensor):
    """False under torch.compile and CUDA graph capture, where reading a tensor's
    values on the host is not allowed, and for meta and fake tensors (FakeTensorMode,
    make_fx), which have none."""
    return not (tensor.is_meta or torch.compiler.is_compiling() or isinstance(tensor, FakeTensor)
                or (tensor.is_cuda and torch.cuda.is_current_stream_capturing()))


def accumulation_dtype(dtype):
    """float64 inputs (the oracle) stay float64; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tf32_allowed(dtype):
    """Whether a fused kernel may take float32 inputs as TF32: torch's
    ``get_float32_matmul_precision()`` "high" or "medium" (the CUDA kernel then runs
    TF32, else 3xTF32; Triton's ``tl.dot`` "tf32", else "ieee")."""
    if dtype != torch.float32:
        return False
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # torch >= 2.9 refuses it once the per-backend API set a precision
        return torch.backends.cuda.matmul.fp32_precision == "tf32"


def as_maps(query):
    """[N, D] rows as a [1, D, N, 1] strided view, so every backend sees maps ([B, D, H, W] maps
    as they are). Scoring rows this way reduces contiguous rows: a norm over the D of
    [B, D, H, W] maps took 30 times longer at 8 x 24 x 64 x 64."""
    return query.T[None, :, :, None] if query.dim() == 2 else query


def _reduced_by_chunks(tensor, dim, reduce, max_elements):
    """``reduce(part)`` over ``dim`` of ``tensor`` in its accumulation dtype, flattened to
    [rows]; converted a chunk at a time along the longest other dimension (rows of [N, D],
    the N of [1, D, N, 1] row maps), so the workspace stays near ``max_elements`` instead
    of a float32 copy of the whole input."""
    acc = accumulation_dtype(tensor.dtype)
    others = [d for d in range(tensor.dim()) if d != dim]
    if tensor.numel() == 0 or not others:
        return reduce(tensor.to(acc), dim).reshape(-1)
    along = max(others, key=lambda d: tensor.shape[d])
    chunk = max(1, max_elements * tensor.shape[along] // tensor.numel())
    parts = [reduce(part.to(acc), dim) for part in tensor.split(chunk, dim=along)]
    return torch.cat(parts, dim=along - (along > dim)).reshape(-1)


def _sum_of_squares(part, dim):
    return part.square().sum(dim)


def _norm(part, dim):
    # Squares summed in float64 cannot overflow for float32 entries (a float32 squared norm does above 1.8e19).
    wide = functools.partial(torch.linalg.vector_norm, part, dim=dim, dtype=torch.float64)
    if part.device.type != "cpu" or not host_read_allowed(part):
        return wide().to(part.dtype)  # a GPU would synchronise to know whether float32 overflowed
    norm = torch.linalg.vector_norm(part, dim=dim)
    overflowed = norm.isinf()
    if not bool(overflowed.any()):  # the usual case: one float32 pass
        return norm
    # Only the rows that overflowed: a row's norm must not depend on its neighbours (identical
    # rows an ulp apart broke the lowest-index tie rule).
    return torch.where(overflowed, wide().to(part.dtype), norm)


def squared_norms(tensor, dim, max_elements=WORKSPACE_ELEMENTS):
    """Sum of squares over ``dim`` in the accumulation dtype, flattened to [rows], with a
    workspace near ``max_elements``. Summed directly rather than as a squared norm, so small
    integers stay exact."""
    return _reduced_by_chunks(tensor, dim, _sum_of_squares, max_elements)


def norms(tensor, dim):
    """Euclidean norms over ``dim`` in the accumulation dtype, flattened to [rows], with a
    workspace near ``WORKSPACE_ELEMENTS``: finite for every finite row (a squared norm overflows
    float32 above 1.8e19, and cosine scores then came out wrong), Inf or NaN for rows holding them."""
    return _reduced_by_chunks(tensor, dim, _norm, WORKSPACE_ELEMENTS)


def _cosine_norms(rows):
    """``norms`` over dim 1 clamped at NORM_EPS, NaN where the norm itself passes the dtype's
    range (entries around 1e38 in float32): such a row, query or reference, matches nothing,
    as a row holding Inf."""
    return norms(rows, dim=1).clamp_min(NORM_EPS).nan_to_num(posinf=float("nan"))


def normalized_rows(rows):
    """[M, D] rows over their norms (``norms``), as ``F.normalize(rows, dim=1)`` with eps
    NORM_EPS, but exact for rows whose squared norm overflows; NaN rows where the norm does."""
    return rows / _cosine_norms(rows).to(rows.dtype)[:, None]


def reference_stat(reference, metric):
    """Per-reference term [M]: 1/|r| (cosine), |r|^2 (l2), or an empty tensor (dot)."""
    if metric == "dot":
        return reference.new_empty(0, dtype=accumulation_dtype(reference.dtype))
    if metric == "cosine":
        return _cosine_norms(reference).reciprocal()
    return squared_norms(reference, dim=1)


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


def worst_score(metric):
    """The score that never wins: +inf distance (l2), -inf similarity (cosine, dot)."""
    return float("inf") if metric == "l2" else float("-inf")


def _from_oriented(oriented, query, metric):
    """Public scores from oriented ones by the per-row term alone."""
    if metric == "dot":
        return oriented
    if metric == "cosine":  # rounding of the two norms can land a hair outside [-1, 1]: acos would give NaN
        # NaN for a row whose norm overflows: its products overflowed too (finite ones would read as 0).
        cosine = oriented / _cosine_norms(query)[:, None]
        return torch.where(cosine.isfinite(), cosine.clamp(-1, 1), cosine)  # +inf: a fused kernel's overflow
    return squared_norms(query, dim=1)[:, None] - oriented


def finalize_class_scores(oriented, query, metric):
    """Public [N, C] class-wise scores from oriented per-class maxima (-inf: no reference):
    the worst score where a class has none, or the query row is not finite (NaN); l2
    distances that cancellation left below 0 are 0."""
    score = _from_oriented(oriented, query, metric)
    if metric == "l2":
        score = score.clamp_min(0)
    return torch.where((oriented == float("-inf")) | score.isnan(), worst_score(metric), score)


def matched_squared_distances(query, reference, index, max_elements=WORKSPACE_ELEMENTS):
    """|q - r|^2 [N, k] of each query row to its matched reference rows, summed directly
    in the accumulation dtype (index -1: any value; the caller masks it), over row chunks
    of about ``max_elements`` gathered values. Row maps and channels-last maps are read
    as [N, D] in place; other maps a chunk of rows at a time, so no [N, D] copy is made."""
    _, dim, height, width = query.shape
    pixels_last = query.permute(0, 2, 3, 1)
    in_place = pixels_last.reshape(-1, dim) if pixels_last.is_contiguous() else None  # a view
    dtype = accumulation_dtype(query.dtype)
    distances = torch.empty(index.shape, device=index.device, dtype=dtype)
    chunk = max(1, max_elements // max(1, index.shape[1] * dim))
    for start in range(0, index.shape[0], chunk):
        if in_place is not None:
            rows = in_place[start:start + chunk].to(dtype)
        else:
            row = torch.arange(start, min(start + chunk, index.shape[0]), device=query.device)
            pixel = row % (height * width)
            rows = query[row // (height * width), :, pixel // width, pixel % width].to(dtype)  # [rows, D]
        matched = reference[index[start:start + chunk].clamp(min=0)].to(dtype)
        distances[start:start + chunk] = (rows[:, None, :] - matched).square().sum(-1)
    return distances


def _sort_by_distance(score, index, max_elements=WORKSPACE_ELEMENTS):
    """Sort top-k lists [N, k] in place by distance, ties by index (as merge_split_lists orders
    lists), over row chunks of about ``max_elements`` entries: the whole lists' sort copies held
    4.7 times the result at k = 4000."""
    chunk = max(1, max_elements // index.shape[1])
    for start in range(0, index.shape[0], chunk):
        part_score, part_index = score[start:start + chunk], index[start:start + chunk]
        by_index = part_index.argsort(dim=1)
        in_order = keep_best(part_score.masked_fill(part_index < 0, float("inf")).gather(1, by_index),
                             index.shape[1], part_index.gather(1, by_index), larger_wins=False)
        part_score.copy_(in_order[0])
        part_index.copy_(in_order[1])


def finalize_scores(oriented, index, query, reference, metric):
    """Public (score, index) from the oriented ones.

    l2 distances are recomputed from the matched rows as sum((q - r)^2): the GEMM form
    |q|^2 - (2 q.r - |r|^2) cancels digits when the features share a large offset (rows
    around 100 gave negative distances), and top-k lists are re-sorted by them. A score
    that is NaN or the worst (cosine or l2 of a query row holding Inf) is no match.

    Args:
        oriented: [N, k] oriented scores.
        index: [N, k] int64, -1 where nothing matched.
        query: [B, D, H, W] maps the N rows came from; reference: [M, D].
    Returns:
        score [N, k]: similarity (cosine, dot) or squared distance (l2), -inf (cosine,
        dot) or +inf (l2) where nothing matched; index [N, k], -1 there.
    """
    if metric == "l2" and index.numel():
        score = matched_squared_distances(query, reference, index)
        if index.shape[1] > 1:
            _sort_by_distance(score, index)
    else:
        score = _from_oriented(oriented, query, metric)
    worst = worst_score(metric)
    no_match = (index < 0) | score.isnan() | (score == worst)
    return score.masked_fill_(no_match, worst), index.masked_fill_(no_match, -1)  # the backends' own: in place
