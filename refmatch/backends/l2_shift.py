"""l2's shift: features that share a large offset are moved by about their mean before the
GEMM form ranks them, which would cancel their digits (see ``centred_for_l2``)."""
import itertools

import torch

from .scoring import WORKSPACE_ELEMENTS, accumulation_dtype, host_read_allowed


OFFSET_RATIO = 16  # centre l2 features whose common offset is 4x their spread (1.2 digits lost)


def _matchable_row_chunks(reference, ignored, max_rows):
    """(rows, matchable [rows, 1]) chunks of ``reference`` in its accumulation dtype, rows that
    can never match zeroed: ignored ones (``ignored`` [M] bool or None) and those holding NaN
    or Inf, which would make every statistic NaN."""
    masks = itertools.repeat(None) if ignored is None else ignored.split(max_rows)
    for chunk, chunk_ignored in zip(reference.split(max_rows), masks):
        chunk = chunk.to(accumulation_dtype(reference.dtype))
        matchable = chunk.isfinite().all(dim=1, keepdim=True)
        if chunk_ignored is not None:
            matchable &= ~chunk_ignored[:, None]
        yield torch.where(matchable, chunk, 0), matchable


def _matchable_row_moments(reference, ignored, max_rows):
    """(number, mean [D], mean squared norm) of the rows that can match, a chunk at a time, in
    float64: float32 sums of squares of a large bank overflow from features around 1e17, and
    the test below then never shifts."""
    count, total, total_sq = 0, 0, 0
    for rows, matchable in _matchable_row_chunks(reference, ignored, max_rows):
        rows = rows.double()
        count, total, total_sq = count + matchable.sum(), total + rows.sum(dim=0), total_sq + rows.square().sum()
    return count, total / count, total_sq / count


def centred_for_l2(query, reference, ignored=None):
    """(query [B, D, H, W], reference [M, D]) moved by about the references' mean when
    the features share an offset of more than 4x their spread.

    Distances do not change under a shift, but the GEMM form loses about
    log10(1 + |offset|^2 / spread^2) digits to cancellation in ranking (rows around
    100 with unit spread: 4 of float32's 7, a wrong neighbour for 3 % of rows). The
    shift is the mean rounded to a power-of-two grid no coarser than the spread per
    channel: at most half a step of offset is left, and integers (e.g. raw intensities)
    stay integers when that spread is >= 1, so exact ties stay exact. The grid is never
    finer than the mean's own precision, so identical references (zero spread) shift by
    their mean. One shift serves every row: rows near 0 beside a cluster far from it
    lose their digits to it (the contract's limits). Statistics come from the rows
    without NaN or Inf (which never match). Float32 and float64 only, since shifting
    half-precision features would round them; not under torch.compile or graph capture
    (one host read decides, a GPU sync); a copy of both when it applies.
    """
    if query.dtype not in (torch.float32, torch.float64) or not host_read_allowed(reference):
        return query, reference
    max_rows = max(1, WORKSPACE_ELEMENTS // reference.shape[1])
    count, mean, mean_norm_sq = _matchable_row_moments(reference, ignored, max_rows)
    offset_sq = mean.square().sum()
    # E|r|^2 - |mean|^2 cancels when the offset dominates, but only by float rounding of
    # |mean|^2, far below the 1/16 that decides; the step below takes the exact spread.
    # Without matchable rows the moments are NaN and the test fails.
    if not bool(offset_sq > OFFSET_RATIO * (mean_norm_sq - offset_sq)):
        return query, reference
    spread_sq = sum(torch.where(matchable, rows - mean, 0).square().sum()
                    for rows, matchable in _matchable_row_chunks(reference, ignored, max_rows)) / count
    precision = torch.finfo(accumulation_dtype(reference.dtype)).eps * mean.abs().amax()  # > 0: the offset dominates
    per_channel = (spread_sq / reference.shape[1]).sqrt().clamp_min(precision)
    step = torch.exp2(torch.floor(torch.log2(per_channel)))
    shift = (torch.round(mean / step) * step).to(query.dtype)
    return query - shift[None, :, None, None], reference - shift
