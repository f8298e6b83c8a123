"""Fused similarity argmax, top-k and class-wise max (``match``, ``classwise_max``) in Triton.

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
    ``shared_memory_ladder`` to one that fits. The grid is
    (cdiv(N, BLOCK_N), splits): when N is too small to fill the GPU the bank is cut
    into ``splits`` even ranges whose partial bests are merged by ``merge_split_lists``.
    ``range_maxima`` gives the ranges instead (RANGES: their starts in memory), so that
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
    a split of at most MAX_SPLIT_REFS rows (fewer registers); channel and in-tile row steps
    times a stride are int32 unless an input spans 2^31 elements (``needs_wide_offsets``).
    The state of top-k and class-wise rows
    lives in registers, so BLOCK_N shrinks as k or C grows; MAX_SLOTS = 64.
"""
import contextlib
import warnings

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ..backends.custom_op import MAX_FUSED_SLOTS as MAX_SLOTS
from ..backends.scoring import tf32_allowed
from ..candidates import merge_split_lists
from .match_epilogues import offer_argmax, offer_classwise, offer_topk, worst_slot
from .match_tiles import (TWO_PROGRAMS_PER_SM, interpret_flag, launch_config, launch_tile, note_cap_spills,
                          pick_splits, shared_memory_ladder)

# Fused multiply-adds in the epilogue (2 q.r - |r|^2), as triton has always compiled it; set
# explicitly because triton 3.10 turns the default off (3.9 warns about it).
FP_FUSION = True
# Per call signature, the step of shared_memory_ladder whose shape loaded on its device.
_FITTING_STEP = {}
MAX_SPLIT_REFS = 1 << 30  # bank rows per split: a power of two, so rounding up to tiles stays below 2^31

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
        m_begin = tl.load(split_starts_ptr + split)
        m_end = tl.load(split_starts_ptr + split + 1)
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


def needs_wide_offsets(query, reference):
    """True when an int32 stride product the kernel loads through could pass 2^31: the last
    channel's (D - 1 times the channel stride) of ``query`` [B, D, H, W] or ``reference``
    [M, D], or the last in-tile row's (up to 255 times the bank's row stride); masked lanes
    are never loaded. E.g. a transposed [M, D] bank view of 2^25 rows at D = 128, or NCHW
    maps of 2^25 pixels at D = 64."""
    channel_reach = max((t.shape[1] - 1) * abs(t.stride(1)) for t in (query, reference))
    return max(channel_reach, 255 * abs(reference.stride(0))) >= 2 ** 31


@contextlib.contextmanager
def _launch_context(device):
    """Triton launches on the current device and its stream, not the tensors' device. On the
    CPU the interpreter runs the kernel in numpy, which warns about NaN and Inf inputs
    (allowed: they never win) and about a tile row of only NaN (nanmax, the interpreter's
    tl.max; that row's maximum is NaN and never wins)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            yield


def _launch(query, reference, ref_stat, labels, metric, reduction, slots, splits, tile, split_starts=None):
    """Run the kernel; partial results [splits, N, slots] (scores, and indices but for class-wise),
    over even bank ranges or, given ``split_starts`` [S + 1], over those ranges.
    Explicit ``tile`` overrides run as given; otherwise a shape the GPU cannot hold (Triton's
    OutOfResources, raised before anything runs) gives way to the next step of the ladder."""
    dim = query.shape[1]
    chosen = launch_tile(query, metric, reduction, tile, split_starts is not None)
    steps = [chosen] if tile or interpret_flag() else shared_memory_ladder(dim, slots, chosen)
    key = (query.device, query.dtype, dim, metric, reduction, slots, split_starts is not None,
           tuple(sorted(chosen.items())))
    for position in range(_FITTING_STEP.get(key, 0), len(steps)):
        try:
            with _launch_context(query.device):
                partial = _launch_shape(query, reference, ref_stat, labels, metric, reduction, slots, splits,
                                        steps[position], split_starts)
        except OutOfResources as error:
            if position + 1 < len(steps):
                continue
            if tile:
                raise  # the caller's own shape
            raise RuntimeError(f"the Triton match kernel has no tile shape that fits this GPU ({error}); "
                               "backend='cuda' or backend='torch' runs this call") from error
        _FITTING_STEP[key] = position
        return partial


def _launch_shape(query, reference, ref_stat, labels, metric, reduction, slots, splits, tile, split_starts):
    """``_launch`` with one shape: ``launch_config`` overrides ``tile``."""
    batch, dim, height, width = query.shape
    num_rows, num_refs = batch * height * width, reference.shape[0]
    capped = tile == TWO_PROGRAMS_PER_SM
    config = launch_config(dim, slots, interpret_flag(), **tile)
    block_n, block_m = config["BLOCK_N"], config["BLOCK_M"]
    row_blocks = triton.cdiv(max(num_rows, 1), block_n)
    if split_starts is None:
        splits = _filling_splits(row_blocks, num_refs, block_m, query.device, splits)
        refs_per_split = triton.cdiv(triton.cdiv(num_refs, splits), block_m) * block_m
        splits = triton.cdiv(num_refs, refs_per_split)
    else:
        splits, refs_per_split = split_starts.shape[0] - 1, 0

    partial_score = torch.empty(splits, num_rows, slots, device=query.device, dtype=torch.float32)
    scores_only = reduction == "classwise" or split_starts is not None
    partial_index = partial_score if scores_only else torch.empty_like(partial_score, dtype=torch.int64)
    if num_rows == 0:
        return partial_score, partial_index
    if metric != "dot":
        # Padded past the last tile and its look-ahead (a range may end anywhere), so stat
        # loads need no mask (a compare per column and tile); padding columns are masked in the scores.
        ref_stat = torch.nn.functional.pad(ref_stat, (0, triton.cdiv(num_refs, block_m) * block_m + 2 * block_m
                                                      - num_refs))
    precision = "tf32" if tf32_allowed(query.dtype) else "ieee"
    kernel = _match_kernel[(row_blocks, splits)](
        query, reference, ref_stat, labels if labels is not None else ref_stat,
        split_starts if split_starts is not None else ref_stat, partial_score, partial_index,
        num_rows, height * width, width, num_refs, dim, refs_per_split,
        *query.stride(), *reference.stride(),
        METRIC=METRIC_CODES[metric], REDUCTION=REDUCTIONS[reduction], SLOTS=slots,
        INPUT_PRECISION=precision, WIDE_OFFSETS=needs_wide_offsets(query, reference), RANGES=split_starts is not None,
        enable_fp_fusion=FP_FUSION, **config,
    )
    if capped:
        note_cap_spills(query, kernel, split_starts is not None)
    return partial_score, partial_index


def match_topk(query, reference, ref_stat, metric, k=1, *, splits=None, **tile):
    """Best k references per query row, with scores before the per-row metric fix-up.

    Args:
        query: [B, D, H, W] maps, read through their strides ([N, D] rows as
            ``rows.T[None, :, :, None]``).
        reference: [M, D].
        ref_stat: [M] float32: 1/|r| for cosine, |r|^2 for l2, ignored for dot
            (NaN marks a reference that never matches).
        metric: "dot", "cosine" or "l2".
        k: 1 <= k <= MAX_SLOTS.
        splits, **tile: overrides of the launch heuristics (tests, ``bench/tune_triton.py``):
            block_n, block_m, num_warps, num_stages, query_resident, maxnreg as in ``launch_config``.

    Returns:
        (score [N, k] float32, index [N, k] int64), best first: score is q.r (dot),
        q.r/|r| (cosine) or 2 q.r - |r|^2 (l2); index -1 where no finite score exists.
    """
    if not 1 <= k <= MAX_SLOTS:
        raise ValueError(f"the fused top-k takes 1 <= k <= {MAX_SLOTS}, got k={k}")
    partial_score, partial_index = _launch(query, reference, ref_stat, None, metric,
                                           "argmax" if k == 1 else "topk", k, splits, tile)
    return merge_split_lists(partial_score, partial_index)


def match_argmax(query, reference, ref_stat, metric, **overrides):
    """``match_topk`` with k = 1, shaped (score [N], index [N])."""
    score, index = match_topk(query, reference, ref_stat, metric, 1, **overrides)
    return score[:, 0], index[:, 0]


def classwise_max(query, reference, ref_stat, labels, metric, num_classes, *, splits=None, **tile):
    """Best oriented score per class, [N, C] (-inf where a class has no reference), from
    C running maxima per row. It needs no host read, so the Triton backend takes it under
    CUDA graph capture; other calls take ``range_maxima`` over class ranges (the k = 1 loop).

    Args as in ``match_topk``; labels: [M] integers in [0, C), C <= MAX_SLOTS.
    Fastest when references are grouped by class: a tile visits only its classes.
    """
    if not 1 <= num_classes <= MAX_SLOTS:
        raise ValueError(f"the fused class-wise max takes 1 <= num_classes <= {MAX_SLOTS}, got {num_classes}")
    partial_score, _ = _launch(query, reference, ref_stat, labels, metric, "classwise", num_classes,
                               splits, tile)
    return partial_score.amax(dim=0)


def _filling_splits(row_blocks, num_refs, block_m, device, asked=None):
    """Bank ranges: ``asked``, or enough to fill the GPU beside ``row_blocks`` programs of rows;
    more where a range would span over MAX_SPLIT_REFS rows (kept indices are int32 offsets into it)."""
    return max(asked or pick_splits(row_blocks, num_refs, block_m, device), triton.cdiv(num_refs, MAX_SPLIT_REFS))


def fill_splits(query, num_refs):
    """Bank ranges a k = 1 launch at the default tile shape cuts M references into, for
    [B, D, H, W] maps (``_filling_splits``)."""
    batch, dim, height, width = query.shape
    config = launch_config(dim, 1, interpret_flag())
    return _filling_splits(triton.cdiv(max(batch * height * width, 1), config["BLOCK_N"]), num_refs,
                           config["BLOCK_M"], query.device)


def range_maxima(query, reference, ref_stat, metric, split_starts, **tile):
    """Best score per query row within each bank range, from the k = 1 kernel: [S, N]
    float32 (-inf where a range holds no finite score), before the per-row fix-up.

    Args as in ``match_topk``; split_starts: int64 [S + 1] on the query's device,
    non-decreasing from >= 0 to <= M: range s is bank rows [split_starts[s],
    split_starts[s + 1]), at most MAX_SPLIT_REFS of them (``class_ranges`` cut to
    ``fill_splits`` keeps to that).
    """
    partial_score, _ = _launch(query, reference, ref_stat, None, metric, "argmax", 1, None, tile, split_starts)
    return partial_score[:, :, 0]
