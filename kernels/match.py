"""Fused similarity argmax (``match``, k = 1) in Triton.

Algorithm
    Query-stationary streaming argmax. A program owns BLOCK_N query rows and walks
    its share of the reference bank in BLOCK_M-row tiles. Per tile it computes the
    scores S = Q R^T with ``tl.dot`` into float32 accumulators, applies the metric
    (cosine: times 1/|r|; l2: 2 q.r - |r|^2; dot: as is), masks NaN and padding to
    -inf, takes the row max and only when some row improves locates the lowest
    column holding it. Scores never leave registers.

Tiling
    BLOCK_D covers D (padded to a power of two) when D <= MAX_RESIDENT_D, so the
    query tile is loaded once and stays in registers; larger D loops over chunks
    of the query and reference inside the tile loop. The grid is
    (cdiv(N, BLOCK_N), splits): when N is too small to fill the GPU the bank is cut
    into ``splits`` ranges whose partial bests are merged by ``merge_splits``.

Semantics and limits
    Ties go to the lowest reference index: strict '>' across tiles, lowest column
    inside a tile, lowest split in the merge. NaN and -inf never win; such rows keep
    index -1. Queries are read through their [B, D, H, W] strides (rows are given
    as B=1, H=N, W=1). Offsets are 64-bit. k = 1 only.
"""
import os

import torch
import triton
import triton.language as tl

METRIC_CODES = {"dot": 0, "cosine": 1, "l2": 2}
MAX_RESIDENT_D = 256


@triton.jit
def _tile_scores(q, ref_tile, acc, INPUT_PRECISION: tl.constexpr):
    return tl.dot(q, tl.trans(ref_tile), acc, input_precision=INPUT_PRECISION)


@triton.jit
def _match_kernel(
    query_ptr, reference_ptr, ref_stat_ptr, out_score_ptr, out_index_ptr,
    num_rows, rows_per_image, width, num_refs, dim, refs_per_split,
    stride_qb, stride_qd, stride_qh, stride_qw, stride_rm, stride_rd,
    METRIC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, QUERY_RESIDENT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    split = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_rows
    image = rows // rows_per_image
    pixel = rows % rows_per_image
    row_offset = image * stride_qb + (pixel // width) * stride_qh + (pixel % width) * stride_qw
    channels = tl.arange(0, BLOCK_D).to(tl.int64)

    if QUERY_RESIDENT:
        q = tl.load(query_ptr + row_offset[:, None] + channels[None, :] * stride_qd,
                    mask=row_ok[:, None] & (channels[None, :] < dim), other=0.0)

    m_begin = split.to(tl.int64) * refs_per_split
    m_end = tl.minimum(m_begin + refs_per_split, num_refs)
    best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    best_index = tl.full((BLOCK_N,), -1, tl.int64)
    for m0 in range(m_begin, m_end, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        col_ok = cols < m_end
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        if QUERY_RESIDENT:
            r = tl.load(reference_ptr + cols[:, None] * stride_rm + channels[None, :] * stride_rd,
                        mask=col_ok[:, None] & (channels[None, :] < dim), other=0.0)
            acc = _tile_scores(q, r, acc, INPUT_PRECISION)
        else:
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + channels
                qd = tl.load(query_ptr + row_offset[:, None] + d[None, :] * stride_qd,
                             mask=row_ok[:, None] & (d[None, :] < dim), other=0.0)
                r = tl.load(reference_ptr + cols[:, None] * stride_rm + d[None, :] * stride_rd,
                            mask=col_ok[:, None] & (d[None, :] < dim), other=0.0)
                acc = _tile_scores(qd, r, acc, INPUT_PRECISION)
        if METRIC == 1:
            acc = acc * tl.load(ref_stat_ptr + cols, mask=col_ok, other=0.0)[None, :]
        elif METRIC == 2:
            acc = 2.0 * acc - tl.load(ref_stat_ptr + cols, mask=col_ok, other=0.0)[None, :]
        scores = tl.where(col_ok[None, :] & (acc == acc), acc, float("-inf"))
        tile_best = tl.max(scores, axis=1)
        improved = tile_best > best
        if tl.max(improved.to(tl.int32), axis=0) > 0:
            at_best = scores == tile_best[:, None]
            tile_index = tl.min(tl.where(at_best, cols[None, :], num_refs), axis=1)
            best_index = tl.where(improved, tile_index, best_index)
            best = tl.where(improved, tile_best, best)

    out = split.to(tl.int64) * num_rows + rows
    tl.store(out_score_ptr + out, best, mask=row_ok)
    tl.store(out_index_ptr + out, best_index, mask=row_ok)


def _next_power_of_two(value):
    return 1 << max(0, value - 1).bit_length()


def _interpret_flag():
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pick_splits(num_row_blocks, num_refs, block_m, device):
    """Cut the bank into ranges when the row blocks alone cannot fill the GPU."""
    if device.type != "cuda":
        return 1
    target_programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    wanted = -(-target_programs // num_row_blocks)
    return max(1, min(wanted, -(-num_refs // (4 * block_m))))


def merge_splits(partial_score, partial_index):
    """Merge partial bests [S, N] of consecutive bank ranges into [N] bests.

    ``max`` over S returns the first (lowest-split, hence lowest-index) maximum;
    empty splits hold (-inf, -1) and never beat a real match.
    """
    score, split = partial_score.max(dim=0)
    return score, partial_index.gather(0, split[None]).squeeze(0)


def match_argmax(query, reference, ref_stat, metric, *, splits=None, block_n=None, block_m=None):
    """Best reference per query row, with scores before the per-row metric fix-up.

    Args:
        query: [B, D, H, W] maps, read through their strides ([N, D] rows as
            ``rows.T[None, :, :, None]``).
        reference: [M, D].
        ref_stat: [M] float32: 1/|r| for cosine, |r|^2 for l2, ignored for dot.
        metric: "dot", "cosine" or "l2".
        splits, block_n, block_m: overrides of the launch heuristics (tests).

    Returns:
        (score [N] float32, index [N] int64): score is q.r (dot), q.r/|r| (cosine)
        or 2 q.r - |r|^2 (l2); index -1 where no finite score exists.
    """
    batch, dim, height, width = query.shape
    num_rows, num_refs = batch * height * width, reference.shape[0]
    interpret = _interpret_flag()
    block_d = max(16, _next_power_of_two(dim)) if dim <= MAX_RESIDENT_D else 64
    block_n = block_n or (32 if interpret else 128)
    block_m = block_m or (32 if interpret else (64 if block_d <= 128 else 32))
    row_blocks = triton.cdiv(max(num_rows, 1), block_n)
    splits = splits or _pick_splits(row_blocks, num_refs, block_m, query.device)
    refs_per_split = triton.cdiv(triton.cdiv(num_refs, splits), block_m) * block_m
    splits = triton.cdiv(num_refs, refs_per_split)

    partial_score = torch.empty(splits, num_rows, device=query.device, dtype=torch.float32)
    partial_index = torch.empty(splits, num_rows, device=query.device, dtype=torch.int64)
    if num_rows == 0:
        return partial_score[0], partial_index[0]
    if query.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        precision = "tf32"
    else:
        precision = "ieee"
    _match_kernel[(row_blocks, splits)](
        query, reference, ref_stat, partial_score, partial_index,
        num_rows, height * width, width, num_refs, dim, refs_per_split,
        *query.stride(), *reference.stride(),
        METRIC=METRIC_CODES[metric], BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d,
        QUERY_RESIDENT=dim <= MAX_RESIDENT_D, INPUT_PRECISION=precision,
        num_warps=8 if block_n >= 128 else 4, num_stages=3,
    )
    if splits == 1:
        return partial_score[0], partial_index[0]
    return merge_splits(partial_score, partial_index)
