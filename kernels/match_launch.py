"""Launches of the fused Triton ``match`` kernel (``match.py``): the public entry points
``match_topk`` (k = 1 included), ``classwise_max`` and ``range_maxima``.

Each call picks a tile shape (``match_tiles``: the register-capped two-programs-per-SM
shape where measured, else the default), steps down the shared-memory ladder when a
shape does not load, cuts the bank into splits that fill the GPU (or takes the ranges
it is given) and merges the per-split partial results.
"""
import contextlib
import warnings

import torch
import triton
from triton.runtime.errors import OutOfResources

from ..backends.custom_op import MAX_FUSED_SLOTS as MAX_SLOTS
from ..backends.scoring import tf32_allowed
from ..candidates import merge_split_lists
from .match import FP_FUSION, METRIC_CODES, REDUCTIONS, _match_kernel
from .match_tiles import (TWO_PROGRAMS_PER_SM, interpret_flag, launch_config, launch_tile, note_cap_spills,
                          pick_splits, shared_memory_ladder)

# Per call signature, the step of shared_memory_ladder whose shape loaded on its device.
_FITTING_STEP = {}
MAX_SPLIT_REFS = 1 << 30  # bank rows per split: a power of two, so rounding up to tiles stays below 2^31


def needs_wide_offsets(query, reference):
    """True when an int32 stride product the kernel loads through could pass 2^31: the last
    channel's (D - 1 times the channel stride) of ``query`` [B, D, H, W] or ``reference``
    [M, D], or the last in-tile row's (up to 255 times the bank's row stride); masked lanes
    are never loaded. E.g. a transposed [M, D] bank view of 2^25 rows at D = 128, or NCHW
    maps of 2^25 pixels at D = 65."""
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
        q.r/|r| (cosine) or 2 q.r - |r|^2 (l2); index -1 where no score but -inf or NaN exists
        (a +inf dot product is a match).
    """
    if not 1 <= k <= MAX_SLOTS:
        raise ValueError(f"the fused top-k takes 1 <= k <= {MAX_SLOTS}, got k={k}")
    partial_score, partial_index = _launch(query, reference, ref_stat, None, metric,
                                           "argmax" if k == 1 else "topk", k, splits, tile)
    return merge_split_lists(partial_score, partial_index)


def classwise_max(query, reference, ref_stat, labels, metric, num_classes, *, splits=None, **tile):
    """Best oriented score per class, [N, C] (-inf where a class has no reference), from
    C running maxima per row. It needs no host read, so the Triton backend takes it under
    CUDA graph capture (and where the k = 1 kernel does not compile: sm_100, triton < 3.9);
    other calls take ``range_maxima`` over class ranges (the k = 1 loop).

    Args as in ``match_topk``; labels: [M] integers in [0, C), C <= MAX_SLOTS.
    Fastest when references are grouped by class: a tile visits only its classes.
    """
    if not 1 <= num_classes <= MAX_SLOTS:
        raise ValueError(f"the fused class-wise max takes 1 <= num_classes <= {MAX_SLOTS}, got {num_classes}")
    # The kernel reads labels at unit stride: a strided or expanded view read other rows' labels.
    partial_score, _ = _launch(query, reference, ref_stat, labels.contiguous(), metric, "classwise", num_classes,
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
    float32 (-inf where a range holds no score but -inf or NaN), before the per-row fix-up.

    Args as in ``match_topk``; split_starts: int64 [S + 1] on the query's device,
    non-decreasing from >= 0 to <= M: range s is bank rows [split_starts[s],
    split_starts[s + 1]), at most MAX_SPLIT_REFS of them (``class_ranges`` cut to
    ``fill_splits`` keeps to that).
    """
    partial_score, _ = _launch(query, reference, ref_stat, None, metric, "argmax", 1, None, tile, split_starts)
    return partial_score[:, :, 0]
