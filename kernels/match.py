"""The fused Triton kernel behind ``match`` and ``classwise_max``: similarity argmax, top-k and
class-wise max. ``match_launch`` launches it (tile shapes, splits, the shared-memory ladder).

Algorithm
    Query-stationary streaming reduction. A program owns BLOCK_N query rows and
    walks its share of the reference bank in BLOCK_M-row tiles. Per tile it
    computes the scores S = Q R^T with ``tl.dot`` into float32 accumulators,
    applies the metric (cosine: times 1/|r|; l2: 2 q.r - |r|^2; dot: as is), masks
    padding columns of a partial tile to -inf and folds the tile into the running state of one of
    three reductions (``match_epilogues``): the best (k = 1: row max first, locate
    only when some row improves), an unsorted top-k list behind a per-row
    threshold (k <= 64), or per-class maxima (C <= 64). Scores never leave registers.
    Triton software-pipelines the tile loop (num_stages): the reductions' own loops sit
    inside branches, as a loop directly in its body would stop the pipeliner.

Tiling
    BLOCK_D covers D (padded to a power of two) when D <= MAX_RESIDENT_D = 128, so
    the query tile is loaded once and stays resident; larger D loops over
    64-channel chunks of the query and reference inside the tile loop (a resident
    256-channel query spilled on sm_90). Tile shapes come from ``match_tiles``: where
    one needs more shared memory than the GPU has (float32 at D = 65..128: TF32 on every
    card, exact below an H100's 227 KB), the launcher steps down its
    ``shared_memory_ladder`` to one that fits (``match_launch``). The grid is
    (cdiv(N, BLOCK_N), splits): when N is too small to fill the GPU the bank is cut
    into ``splits`` even ranges whose partial bests are merged by ``merge_split_lists``.
    ``match_launch.range_maxima`` gives the ranges instead (RANGES: their starts in memory), so that
    the k = 1 loop yields the class-wise max of a bank stored class by class.
    The per-reference term (1/|r|, |r|^2) of the next tile is loaded before this
    tile's dot: loaded where it is used, it waited on global memory after every
    dot and made l2 1.5-2x slower than dot on an H200. The launcher pads that term
    by two tiles past the bank's last whole tile (a range may end anywhere), so these
    loads go unmasked.

Epilogue cost
    On sm_90 the MMA at D = 64 leaves about 4 issue slots per score, so the epilogue
    works per score only where it must: the metric's multiply-add and one max (NaN needs no
    select: tl.max reduces with maxnum, which skips NaN, and NaN fails every compare).
    Padding columns are masked only in a range's last, partial tile (class-wise: by label).

Semantics and limits
    Ties go to the lowest reference index: strict '>' across tiles, lowest column
    inside a tile, lowest split in the merge. NaN and -inf never win; such rows keep
    index -1. Queries are read through their [B, D, H, W] strides (rows are given
    as B=1, H=N, W=1). Row and tile offsets are 64-bit, kept indices int32 offsets into
    a split of at most ``match_launch.MAX_SPLIT_REFS`` rows (fewer registers); channel and in-tile
    row steps times a stride are int32 unless an input spans 2^31 elements (WIDE_OFFSETS, set by
    ``match_launch.needs_wide_offsets``).
    The state of top-k and class-wise rows
    lives in registers, so BLOCK_N shrinks as k or C grows; MAX_SLOTS = 64.
"""
import triton
import triton.language as tl

from .match_epilogues import offer_argmax, offer_classwise, offer_topk, worst_slot

# Fused multiply-adds in the epilogue (2 q.r - |r|^2), as triton has always compiled it; set
# explicitly because triton 3.10 turns the default off (3.9 warns about it).
FP_FUSION = True
METRIC_CODES = {"dot": 0, "cosine": 1, "l2": 2}
REDUCTIONS = {"argmax": 0, "topk": 1, "classwise": 2}


@triton.jit
def _tile_scores(q, ref_tile, acc, INPUT_PRECISION: tl.constexpr):
    return tl.dot(q, tl.trans(ref_tile), acc, input_precision=INPUT_PRECISION)


@triton.jit
def _match_kernel(
    query_ptr, reference_ptr, ref_stat_ptr, labels_ptr, split_starts_ptr, out_score_ptr, out_index_ptr,
    num_rows, rows_per_image, width, num_refs, dim, refs_per_split,
    stride_qb, stride_qd, stride_qh, stride_qw, stride_rm, stride_rd,
    METRIC: tl.constexpr, REDUCTION: tl.constexpr, SLOTS: tl.constexpr, SLOTS_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, QUERY_RESIDENT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    WIDE_OFFSETS: tl.constexpr, RANGES: tl.constexpr,
):
    split = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_rows
    image = rows // rows_per_image
    pixel = rows % rows_per_image
    row_offset = image * stride_qb + (pixel // width) * stride_qh + (pixel % width) * stride_qw
    channels = tl.arange(0, BLOCK_D)
    # Tile columns are int32 offsets from the int64 tile start m0: int64 [BLOCK_N, BLOCK_M]
    # index matrices would take twice the registers (they spilled on sm_90). Channel and
    # row steps times a stride go int64 only where an input spans 2^31 elements or more.
    local = tl.arange(0, BLOCK_M)
    if WIDE_OFFSETS:
        channel_step, row_step = channels.to(tl.int64), local.to(tl.int64)
    else:
        channel_step, row_step = channels, local

    if QUERY_RESIDENT:
        q = tl.load(query_ptr + row_offset[:, None] + channel_step[None, :] * stride_qd,
                    mask=row_ok[:, None] & (channels[None, :] < dim), other=0.0)

    if RANGES:  # split s is bank rows [split_starts[s], split_starts[s + 1]): class ranges
        # clamped into [0, M] as the CUDA kernel does: a bad range reads nothing out of bounds
        m_begin = tl.minimum(tl.maximum(tl.load(split_starts_ptr + split), 0), num_refs)
        m_end = tl.minimum(tl.maximum(tl.load(split_starts_ptr + split + 1), m_begin), num_refs)
    else:
        m_begin = split.to(tl.int64) * refs_per_split
        m_end = tl.minimum(m_begin + refs_per_split, num_refs)
    # argmax: [BLOCK_N] best; top-k / class-wise: [BLOCK_N, SLOTS_PAD] lists, with
    # padding slots at +inf so that they are never a row's worst. Indices are int32 from
    # m_begin (the launcher keeps a split under 2^31 rows): int64 ones spilled under the
    # two-programs-per-SM register cap.
    slots = tl.arange(0, SLOTS_PAD)
    if REDUCTION == 0:
        best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        best_index = tl.full((BLOCK_N,), -1, tl.int32)
        worst, worst_at = best, best_index  # top-k state; unused here
    else:
        padding = tl.where(slots < SLOTS, float("-inf"), float("inf"))
        best = tl.zeros((BLOCK_N, SLOTS_PAD), tl.float32) + padding[None, :]
        best_index = tl.full((BLOCK_N, SLOTS_PAD), -1, tl.int32)
        worst, worst_at = worst_slot(best, best_index, slots, SLOTS_PAD)
    if METRIC != 0:  # the per-reference term is loaded one tile ahead (see the header)
        next_stat = tl.load(ref_stat_ptr + m_begin + local)
    for m0 in range(m_begin, m_end, BLOCK_M):
        col_ok = local < tl.minimum(m_end - m0, BLOCK_M).to(tl.int32)
        if METRIC != 0:
            stat = next_stat
            next_stat = tl.load(ref_stat_ptr + m0 + BLOCK_M + local)
        ref_tile_ptr = reference_ptr + m0 * stride_rm + row_step[:, None] * stride_rm
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        if QUERY_RESIDENT:
            r = tl.load(ref_tile_ptr + channel_step[None, :] * stride_rd,
                        mask=col_ok[:, None] & (channels[None, :] < dim), other=0.0)
            acc = _tile_scores(q, r, acc, INPUT_PRECISION)
        else:
            for d0 in range(0, dim, BLOCK_D):
                d, d_step = d0 + channels, d0 + channel_step
                qd = tl.load(query_ptr + row_offset[:, None] + d_step[None, :] * stride_qd,
                             mask=row_ok[:, None] & (d[None, :] < dim), other=0.0)
                r = tl.load(ref_tile_ptr + d_step[None, :] * stride_rd,
                            mask=col_ok[:, None] & (d[None, :] < dim), other=0.0)
                acc = _tile_scores(qd, r, acc, INPUT_PRECISION)
        if METRIC == 1:
            acc = acc * stat[None, :]
        elif METRIC == 2:
            acc = 2.0 * acc - stat[None, :]
        # No per-score select on full tiles (see the header): it was 3 of ~6 ops per score.
        # Class-wise leaves padding to its labels (-1, no class).
        scores = acc
        full_tile = m0 + BLOCK_M <= m_end
        tile_start = (m0 - m_begin).to(tl.int32)
        if REDUCTION != 2 and not full_tile:
            scores = tl.where(col_ok[None, :], acc, float("-inf"))
        if REDUCTION == 0:
            best, best_index = offer_argmax(scores, local, tile_start, best, best_index, BLOCK_M)
        elif REDUCTION == 1:
            best, best_index, worst, worst_at = offer_topk(scores, local, tile_start, best, best_index, worst, worst_at,
                                                          slots, BLOCK_M, SLOTS_PAD)
        else:
            labels = tl.load(labels_ptr + m0 + local, mask=col_ok, other=-1).to(tl.int32)
            best = offer_classwise(scores, labels, full_tile, best, slots)

    # Outputs are [splits, N, SLOTS] (SLOTS = 1 for argmax).
    out = (split.to(tl.int64) * num_rows + rows) * SLOTS
    index = tl.where(best_index >= 0, m_begin + best_index, -1)
    if REDUCTION == 0:
        tl.store(out_score_ptr + out, best, mask=row_ok)
        if not RANGES:  # range maxima are scores only
            tl.store(out_index_ptr + out, index, mask=row_ok)
    else:
        out_slots = out[:, None] + slots[None, :]
        slot_ok = row_ok[:, None] & (slots[None, :] < SLOTS)
        tl.store(out_score_ptr + out_slots, best, mask=slot_ok)
        if REDUCTION == 1:
            tl.store(out_index_ptr + out_slots, index, mask=slot_ok)
