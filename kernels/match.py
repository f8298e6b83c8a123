"""Fused similarity argmax, top-k and class-wise max (``match``, ``classwise_max``) in Triton.

Algorithm
    Query-stationary streaming reduction. A program owns BLOCK_N query rows and
    walks its share of the reference bank in BLOCK_M-row tiles. Per tile it
    computes the scores S = Q R^T with ``tl.dot`` into float32 accumulators,
    applies the metric (cosine: times 1/|r|; l2: 2 q.r - |r|^2; dot: as is), masks
    NaN and padding to -inf and folds the tile into the running state of one of
    three reductions (``match_epilogues``): the best (k = 1: row max first, locate
    only when some row improves), an unsorted top-k list behind a per-row
    threshold (k <= 64), or per-class maxima (C <= 64). Scores never leave registers.

Tiling
    BLOCK_D covers D (padded to a power of two) when D <= MAX_RESIDENT_D = 128, so
    the query tile is loaded once and stays resident; larger D loops over
    64-channel chunks of the query and reference inside the tile loop (a resident
    256-channel query spilled on sm_90). Tile shapes come from ``launch_config``. The grid is
    (cdiv(N, BLOCK_N), splits): when N is too small to fill the GPU the bank is cut
    into ``splits`` ranges whose partial bests are merged by ``merge_split_lists``.
    The per-reference term (1/|r|, |r|^2) of the next tile is loaded before this
    tile's dot: loaded where it is used, it waited on global memory after every
    dot and made l2 1.5-2x slower than dot on an H200.

Semantics and limits
    Ties go to the lowest reference index: strict '>' across tiles, lowest column
    inside a tile, lowest split in the merge. NaN and -inf never win; such rows keep
    index -1. Queries are read through their [B, D, H, W] strides (rows are given
    as B=1, H=N, W=1). Offsets are 64-bit. The state of top-k and class-wise rows
    lives in registers, so BLOCK_N shrinks as k or C grows; MAX_SLOTS = 64.
"""
import os

import torch
import triton
import triton.language as tl

from ..backends.custom_op import MAX_FUSED_SLOTS as MAX_SLOTS
from ..backends.scoring import tf32_allowed
from ..candidates import merge_split_lists
from .match_epilogues import offer_argmax, offer_classwise, offer_topk, worst_slot

METRIC_CODES = {"dot": 0, "cosine": 1, "l2": 2}
REDUCTIONS = {"argmax": 0, "topk": 1, "classwise": 2}
MAX_RESIDENT_D = 128
NUM_STAGES = 3
# Two 8-warp programs per SM for the dot argmax on sm_90 with a resident 64- or 128-channel
# query: on an H200 under triton 3.6 it took D=128 from 203 to 170 ms and D=64 from 159 to
# 141 ms (bench/results/NVIDIA-H200-triton-tiles-2026-11-26.md); l2 spilled and was slower.
# Other triton versions may spill under the cap (3.9: 144 bytes); a compile that spills turns
# it off for its (device, dtype, D).
TWO_PROGRAMS_PER_SM = dict(num_stages=2, maxnreg=128)
_CAP_SPILLED = {}


@triton.jit
def _tile_scores(q, ref_tile, acc, INPUT_PRECISION: tl.constexpr):
    return tl.dot(q, tl.trans(ref_tile), acc, input_precision=INPUT_PRECISION)


@triton.jit
def _match_kernel(
    query_ptr, reference_ptr, ref_stat_ptr, labels_ptr, out_score_ptr, out_index_ptr,
    num_rows, rows_per_image, width, num_refs, dim, refs_per_split,
    stride_qb, stride_qd, stride_qh, stride_qw, stride_rm, stride_rd,
    METRIC: tl.constexpr, REDUCTION: tl.constexpr, SLOTS: tl.constexpr, SLOTS_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, QUERY_RESIDENT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    split = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < num_rows
    image = rows // rows_per_image
    pixel = rows % rows_per_image
    row_offset = image * stride_qb + (pixel // width) * stride_qh + (pixel % width) * stride_qw
    channels = tl.arange(0, BLOCK_D)

    if QUERY_RESIDENT:
        q = tl.load(query_ptr + row_offset[:, None] + channels[None, :] * stride_qd,
                    mask=row_ok[:, None] & (channels[None, :] < dim), other=0.0)

    m_begin = split.to(tl.int64) * refs_per_split
    m_end = tl.minimum(m_begin + refs_per_split, num_refs)
    # argmax: [BLOCK_N] best; top-k / class-wise: [BLOCK_N, SLOTS_PAD] lists, with
    # padding slots at +inf so that they are never a row's worst.
    slots = tl.arange(0, SLOTS_PAD)
    if REDUCTION == 0:
        best = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        best_index = tl.full((BLOCK_N,), -1, tl.int64)
        worst, worst_at = best, best_index  # top-k state; unused here
    else:
        padding = tl.where(slots < SLOTS, float("-inf"), float("inf"))
        best = tl.zeros((BLOCK_N, SLOTS_PAD), tl.float32) + padding[None, :]
        best_index = tl.full((BLOCK_N, SLOTS_PAD), -1, tl.int64)
        worst, worst_at = worst_slot(best, best_index, slots, SLOTS_PAD)
    # Tile columns are int32 offsets from the int64 tile start m0: int64 [BLOCK_N, BLOCK_M]
    # index matrices would take twice the registers (they spilled on sm_90).
    local = tl.arange(0, BLOCK_M)
    if METRIC != 0:  # the per-reference term is loaded one tile ahead (see the header)
        next_stat = tl.load(ref_stat_ptr + m_begin + local, mask=local < m_end - m_begin, other=0.0)
    for m0 in range(m_begin, m_end, BLOCK_M):
        col_ok = local < tl.minimum(m_end - m0, BLOCK_M).to(tl.int32)
        if METRIC != 0:
            stat = next_stat
            next_stat = tl.load(ref_stat_ptr + m0 + BLOCK_M + local, mask=local < m_end - m0 - BLOCK_M, other=0.0)
        ref_tile_ptr = reference_ptr + m0 * stride_rm + local[:, None] * stride_rm
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        if QUERY_RESIDENT:
            r = tl.load(ref_tile_ptr + channels[None, :] * stride_rd,
                        mask=col_ok[:, None] & (channels[None, :] < dim), other=0.0)
            acc = _tile_scores(q, r, acc, INPUT_PRECISION)
        else:
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + channels
                qd = tl.load(query_ptr + row_offset[:, None] + d[None, :] * stride_qd,
                             mask=row_ok[:, None] & (d[None, :] < dim), other=0.0)
                r = tl.load(ref_tile_ptr + d[None, :] * stride_rd,
                            mask=col_ok[:, None] & (d[None, :] < dim), other=0.0)
                acc = _tile_scores(qd, r, acc, INPUT_PRECISION)
        if METRIC == 1:
            acc = acc * stat[None, :]
        elif METRIC == 2:
            acc = 2.0 * acc - stat[None, :]
        scores = tl.where(col_ok[None, :] & (acc == acc), acc, float("-inf"))
        if REDUCTION == 0:
            best, best_index = offer_argmax(scores, local, m0, best, best_index, BLOCK_M)
        elif REDUCTION == 1:
            best, best_index, worst, worst_at = offer_topk(scores, local, m0, best, best_index, worst, worst_at,
                                                          slots, BLOCK_M, SLOTS_PAD)
        else:
            labels = tl.load(labels_ptr + m0 + local, mask=col_ok, other=0).to(tl.int32)
            best = offer_classwise(scores, labels, col_ok, best, slots)

    # Outputs are [splits, N, SLOTS] (SLOTS = 1 for argmax).
    out = (split.to(tl.int64) * num_rows + rows) * SLOTS
    if REDUCTION == 0:
        tl.store(out_score_ptr + out, best, mask=row_ok)
        tl.store(out_index_ptr + out, best_index, mask=row_ok)
    else:
        out_slots = out[:, None] + slots[None, :]
        slot_ok = row_ok[:, None] & (slots[None, :] < SLOTS)
        tl.store(out_score_ptr + out_slots, best, mask=slot_ok)
        if REDUCTION == 1:
            tl.store(out_index_ptr + out_slots, best_index, mask=slot_ok)


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


def launch_config(dim, slots, interpret=False, block_n=None, block_m=None, num_warps=None, num_stages=None,
                  query_resident=None, maxnreg=None):
    """Compile-time tile shape of a launch: dict of BLOCK_N, BLOCK_M, BLOCK_D, SLOTS_PAD,
    QUERY_RESIDENT, num_warps, num_stages and, when given, maxnreg (the register cap
    per thread that lets two programs share an SM); the keyword arguments override them.

    Chosen so that no variant spills registers on sm_80 or sm_90 (checked in CI
    by compiling ahead of time, ``match_aot``). Sweeps on an H200 with triton 3.6
    (``bench/tune_triton.py``) found two faster argmax shapes that are not the
    default: 256x128 tiles (spill), and two programs per SM (2 stages, maxnreg=128:
    dot 203 -> 170 ms at D=128, no spill under triton 3.6 but 144 bytes under 3.9
    and 48-64 on sm_80; l2 spilled and was slower). The launcher takes the second for
    the dot argmax on sm_90 where it compiles without spills (``TWO_PROGRAMS_PER_SM``).
    """
    slots_pad = _next_power_of_two(slots)
    resident = dim <= MAX_RESIDENT_D if query_resident is None else query_resident
    block_d = max(16, _next_power_of_two(dim)) if resident else 64
    if interpret:
        block_n, block_m = block_n or 32, block_m or 32
    # Top-k and class-wise rows keep slots_pad scores in registers: smaller tiles.
    if slots_pad == 1:
        default_n, default_m = 128, 128
    elif slots_pad <= 32:
        default_n, default_m = 64, 64
    else:
        default_n, default_m = 32, 64 if resident else 128
    block_n, block_m = block_n or default_n, block_m or default_m
    # On 4 warps under triton 3.6 (torch 2.11), 64 slots beside a resident query
    # spill, and sm_80 top-8 at D=32 keeps an 8-byte stack frame.
    wide = block_n >= 128 or (slots_pad > 32 and resident) or (slots_pad > 1 and block_d <= 32)
    config = dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, SLOTS_PAD=slots_pad,
                  QUERY_RESIDENT=resident, num_warps=num_warps or (8 if wide else 4),
                  num_stages=num_stages or NUM_STAGES)
    return config if maxnreg is None else dict(config, maxnreg=maxnreg)


def _launch(query, reference, ref_stat, labels, metric, reduction, slots, splits, tile):
    """Run the kernel; partial results [splits, N, slots] (scores, and indices but for class-wise)."""
    batch, dim, height, width = query.shape
    num_rows, num_refs = batch * height * width, reference.shape[0]
    tile = launch_tile(query, metric, reduction, tile)
    capped = tile == TWO_PROGRAMS_PER_SM
    config = launch_config(dim, slots, _interpret_flag(), **tile)
    block_n, block_m = config["BLOCK_N"], config["BLOCK_M"]
    row_blocks = triton.cdiv(max(num_rows, 1), block_n)
    splits = splits or _pick_splits(row_blocks, num_refs, block_m, query.device)
    refs_per_split = triton.cdiv(triton.cdiv(num_refs, splits), block_m) * block_m
    splits = triton.cdiv(num_refs, refs_per_split)

    partial_score = torch.empty(splits, num_rows, slots, device=query.device, dtype=torch.float32)
    partial_index = partial_score if reduction == "classwise" else torch.empty_like(partial_score, dtype=torch.int64)
    if num_rows == 0:
        return partial_score, partial_index
    precision = "tf32" if tf32_allowed(query.dtype) else "ieee"
    kernel = _match_kernel[(row_blocks, splits)](
        query, reference, ref_stat, labels if labels is not None else ref_stat, partial_score, partial_index,
        num_rows, height * width, width, num_refs, dim, refs_per_split,
        *query.stride(), *reference.stride(),
        METRIC=METRIC_CODES[metric], REDUCTION=REDUCTIONS[reduction], SLOTS=slots,
        INPUT_PRECISION=precision, **config,
    )
    if capped and _cap_key(query) not in _CAP_SPILLED:  # a compile's spills do not change
        _CAP_SPILLED[_cap_key(query)] = getattr(kernel, "n_spills", None) != 0  # unknown: as spilled
    return partial_score, partial_index


def _cap_key(query):
    return query.device, query.dtype, query.shape[1]


def launch_tile(query, metric, reduction, tile):
    """The ``launch_config`` overrides a launch takes: ``tile`` when given; without any,
    ``TWO_PROGRAMS_PER_SM`` for the dot argmax of a resident 64- or 128-channel query on
    sm_90 (where it was measured) unless its compile spilled, else none."""
    if tile or metric != "dot" or reduction != "argmax" or query.device.type != "cuda" or _interpret_flag():
        return dict(tile)
    if not 32 < query.shape[1] <= MAX_RESIDENT_D:
        return {}
    capped = torch.cuda.get_device_capability(query.device)[0] == 9 and not _CAP_SPILLED.get(_cap_key(query))
    return dict(TWO_PROGRAMS_PER_SM) if capped else {}


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
    """Best oriented score per class, [N, C] (-inf where a class has no reference).

    Args as in ``match_topk``; labels: [M] integers in [0, C), C <= MAX_SLOTS.
    Fastest when references are grouped by class: a tile visits only its classes.
    """
    if not 1 <= num_classes <= MAX_SLOTS:
        raise ValueError(f"the fused class-wise max takes 1 <= num_classes <= {MAX_SLOTS}, got {num_classes}")
    partial_score, _ = _launch(query, reference, ref_stat, labels, metric, "classwise", num_classes,
                               splits, tile)
    return partial_score.amax(dim=0)
