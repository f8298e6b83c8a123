"""Chunked PyTorch backend: the CPU path, the fallback and (in float64) the test oracle.

The bank is walked in blocks of ``block_m`` references; each block is scored
against ``block_n`` query rows with one BLAS GEMM into a reused tile (``score_tiles``) and
reduced to a running best (k = 1) or a running top-k. On the CPU the tile stays cache-sized
so the reduction runs at the speed of the GEMM under it.
On x86 CPUs where refmatch._C has it, a float32 walk with k <= 1024 runs fused in C++
(``cpu_topk``): the same prepared blocks, no score tile; on AVX512_BF16 cores it screens
in bfloat16 first (``torch_screening``), with the same results.
"""
import os

import torch

from ..candidates import keep_best, pad_by_row
from . import cpu_topk
from .custom_op import register_classwise_op, register_match_op
from .score_tiles import block_of, block_sizes, drop_nan, gemm_alpha, prepare_block, query_rows, scored_tiles
from .scoring import accumulation_dtype, as_maps, finalize_scores
from .torch_screening import screen_status, screen_switched_off, screen_window, screening_applies

# Entering scores per row, per k, above which a CPU tile merges whole: 8 against 4 took a lung
# teacher's 32768 x 23156 x 24 cosine walk from 880 to 770 ms at k = 8 (k = 2: 630 -> 480-570,
# k = 16: 1090 -> 1000); random 8192 x 16384 x 64 features alike; 16 took 2.8 s.
WIDE_ENTRY = 8


def _row_max(tile):
    """Row maxima of a CPU tile, NaN never winning: only rows whose max is NaN
    (rare: NaN queries or references, overflow) are cleaned and taken again."""
    score = tile.amax(dim=1)
    nan_rows = score.isnan().nonzero()[:, 0]
    if nan_rows.numel():
        tile[nan_rows] = drop_nan(tile[nan_rows])
        score[nan_rows] = tile[nan_rows].amax(dim=1)
    return score


def _offer_best(best, best_index, tile, col0):
    """k = 1. Ties: argmax/max return the first maximum, '>' keeps earlier blocks.

    On the CPU the row max alone is cheap and the position is located only for
    rows it improves, as the fused kernels do (a full max-with-index costs ~40 %
    of the GEMM). On GPUs one fused max avoids the host sync of that selection.
    """
    if tile.is_cuda:
        score, col = tile.max(dim=1)
        better = score > best[:, 0]
        best[:, 0] = torch.where(better, score, best[:, 0])
        best_index[:, 0] = torch.where(better, col + col0, best_index[:, 0])
        return
    score = _row_max(tile)
    rows = (score > best[:, 0]).nonzero()[:, 0]
    if rows.numel():
        best[rows, 0] = score[rows]
        best_index[rows, 0] = tile[rows].argmax(dim=1) + col0


def _offer_topk(best, best_index, tile, col0):
    """Running top-k. On GPUs one merge of the whole tile (no host sync). On the
    CPU only rows whose tile max beats their k-th best take part, and once the
    lists are good (few scores per row enter) only the entering scores are
    merged; a score equal to the k-th best never enters, its index is higher."""
    if tile.is_cuda:
        _merge_topk(best, best_index, tile, col0)
        return
    improving = _row_max(tile) > best[:, -1]
    count = int(improving.sum())
    if count == 0:
        return
    if count > tile.shape[0] // 2:  # most rows take part: merge in place, no row gathers
        _merge_entering(best, best_index, tile, col0)
        return
    rows = improving.nonzero()[:, 0]
    row_best, row_index = best[rows], best_index[rows]
    _merge_entering(row_best, row_index, tile[rows], col0)
    best[rows], best_index[rows] = row_best, row_index


def _merge_entering(best, best_index, tile, col0):
    """CPU: merge the tile scores that beat each row's k-th best. Tiles where some row
    takes more than ``WIDE_ENTRY`` k scores (early tiles) take the top-k of the tile instead."""
    entering = (tile > best[:, -1:]).nonzero()  # (row, col), ascending col per row
    counts = torch.bincount(entering[:, 0], minlength=tile.shape[0])
    width = int(counts.max()) if counts.numel() else 0
    if width > WIDE_ENTRY * best.shape[1]:
        _merge_topk(best, best_index, tile, col0)
        return
    row, col = entering.unbind(1)
    _merge_into_lists(best, best_index, *pad_by_row(row, counts, width, tile[row, col], col + col0))


def _merge_topk(best, best_index, tile, col0):
    """Merge a tile into running top-k lists with the lowest-index tie rule, without
    sorting the tile.

    Everything above the tile's k-th value enters; the remaining slots go to the
    lowest columns equal to it. The union with the running list is then ordered
    by a stable sort, whose ties keep the lower (earlier) indices first.
    """
    k, width = best.shape[1], tile.shape[1]
    kk = min(k, width)
    kth = tile.topk(kk, dim=1).values[:, -1:]
    lowest_first = torch.arange(width, 0, -1, device=tile.device, dtype=tile.dtype)
    priority = torch.where(tile == kth, lowest_first, 0.0).masked_fill_(tile > kth, 2.0 * width)
    cols = priority.topk(kk, dim=1).indices.sort(dim=1).values
    _merge_into_lists(best, best_index, tile.gather(1, cols), cols + col0)


def _merge_into_lists(best, best_index, candidate, candidate_index):
    """Merge candidates (per row in ascending index, all above earlier blocks'
    indices) into the running lists in place."""
    score, index = keep_best(torch.cat([best, candidate], dim=1), best.shape[1],
                             torch.cat([best_index, candidate_index], dim=1))
    best.copy_(score)
    best_index.copy_(index)


def match_chunked(query, reference, ignored, k, metric, tile_bytes=None, block_m=None, screen=None):
    """Top-k references per query row by chunked GEMM.

    Args:
        query: [B, D, H, W] maps ([N, D] rows as ``rows.T[None, :, :, None]``).
        reference: [M, D].
        ignored: [M] bool, True for references that never match, or None.
        k: number of matches per row, 1 <= k <= M (slots beyond the matchable
            references hold index -1).
        metric: "cosine", "dot" or "l2".
        tile_bytes, block_m: overrides of the tile budget (tests).
        screen: let the CPU's fused float32 walk screen in bfloat16 (``torch_screening``;
            the same results) where it can; None decides by problem size.
    Returns:
        (score [N, k], index [N, k] int64), best first.
    """
    rows = query_rows(query)
    best, best_index = match_rows(rows, reference, ignored, k, metric, tile_bytes, block_m, screen)
    return finalize_scores(best, best_index, as_maps(rows), reference, metric)  # norms over contiguous rows


def match_rows(rows, reference, ignored, k, metric, tile_bytes=None, block_m=None, screen=None):
    """Oriented (score [N, k], index [N, k]) of [N, D] query rows in the operand dtype, one
    reference block at a time: fused in C++ where it can (screened where ``screen`` allows)."""
    if cpu_topk.applies(rows, reference, k):
        window = screen_window(rows, reference, ignored, metric) if screening_applies(rows, reference, k, screen) \
            else None
        return fused_walk(rows, reference, ignored, k, metric, window)[:2]
    block_m, block_n = block_sizes(rows, reference, tile_bytes, block_m)
    dtype = accumulation_dtype(rows.dtype)
    best = torch.full((rows.shape[0], k), float("-inf"), device=rows.device, dtype=dtype)
    best_index = torch.full((rows.shape[0], k), -1, device=rows.device, dtype=torch.int64)
    offer = _offer_best if k == 1 else _offer_topk
    for row0, col0, tile in scored_tiles(rows, reference, ignored, metric, block_m, block_n, nan_checked_later=True):
        offer(best[row0:row0 + block_n], best_index[row0:row0 + block_n], tile, col0)
    best_index.masked_fill_(best == float("-inf"), -1)
    return best, best_index


def fused_walk(rows, reference, ignored, k, metric, window=None):
    """``cpu_topk.topk_walk`` of float32 [N, D] query rows over ``reference``'s prepared blocks
    (``ignored`` [M] bool or None): (score [N, k], index [N, k], (vectors, float32 vectors));
    ``window`` [N]: the bfloat16 screen's per-row bounds (``screen_window``), or None."""
    def prepared_block(col0, count):
        return prepare_block(reference[col0:col0 + count], block_of(ignored, col0, count), metric, rows.dtype,
                             accumulation_dtype(rows.dtype))[:2]

    return cpu_topk.topk_walk(rows, reference.shape[0], prepared_block, gemm_alpha(metric), k, window)


class TorchBackend:
    """Always available; any device, metric and k, and every dtype ``match`` takes (float64 included)."""

    name = "torch"

    def __init__(self):
        from .torch_classwise import classwise_chunked

        self.op = register_match_op(self.name, match_chunked)
        self.classwise_op = register_classwise_op(self.name, classwise_chunked)

    def status(self):
        """(True, what the CPU path runs here); a bad setting is named where float32 calls raise on it."""
        isas = cpu_topk.native_isas()
        try:
            cpu_topk.check_setting()
            refused = None
        except ValueError as error:
            refused = error
        team = cpu_topk.openmp_team() if isas else ""
        threads = f"torch's OpenMP team ({os.path.basename(team)})" if team else "threads started per call"
        walk = (f"float32 walks (k<={cpu_topk.MAX_K}) fused in C++ ({cpu_topk.ISA_NAMES[isas[0]]}, on {threads})"
                if isas else
                f"float32 walks raise: {refused}" if refused else
                f"float32 walks on GEMM tiles (no fused one: {cpu_topk.unavailable_reason()})")
        return True, f"chunked GEMM on any device; the CPU path and the float64 oracle; {walk}; {screen_status()}"

    def decline_reason(self, problem):
        """None: it runs every call. Settings that float32 CPU calls read are checked here, before the
        op, so their error never crosses the dispatcher (one CI run segfaulted while it did, torch 2.13).
        While torch.compile traces, which cannot read _C's answer, only the width's spelling (a width
        this CPU lacks walks GEMM tiles there)."""
        if problem.device.type == "cpu" and problem.dtype == torch.float32:
            compiling = torch.compiler.is_compiling()
            cpu_topk.check_setting(spelling_only=compiling)
            if not compiling:
                screen_switched_off()
        return None
