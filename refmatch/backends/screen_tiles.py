"""The tile passes of the CPU's bfloat16 screen (``screen_candidates.ScreenCandidates.offer``):
each finds a screened tile's candidates and raises the k-th bounds of its rows, in C++
(``refmatch._C``, csrc/include/refmatch/screen_tile.h) where the extension is built, else
in torch, with the same results."""
import functools

import torch

from .cuda_backend import native_module

CHUNK = 64  # columns per run whose maximum decides whether the run is read


@functools.cache
def native_screen():
    """``refmatch._C.screen_tile_candidates``, or None where the extension was not built (or
    was built before it had one): the tile pass of ``ScreenCandidates.offer`` in C++
    (csrc/include/refmatch/screen_tile.h)."""
    return getattr(native_module(), "screen_tile_candidates", None)


def tile_pass_name():
    """Which tile pass the screen runs here, for ``refmatch info``."""
    if native_screen():
        return "C++ (refmatch._C)"
    return "torch (refmatch._C not built)" if native_module() is None else "torch (refmatch._C predates it: rebuild)"


def tile_candidates(store, tile, rows):
    """The candidates of a bfloat16 tile [H, W] of the ``rows`` of ``store`` (a
    ScreenCandidates): (tile row [P], column [P], screened score [P], ascending row then
    column; whether every row came near), or None when no row comes near; raises the
    bounds of the rows that do. The C++ pass where it is built and the tile fits its
    pointers (a contiguous CPU tile within the store), else the torch pass, which names a misfit."""
    native = native_screen()
    fits = (tile.dtype == torch.bfloat16 and tile.device.type == "cpu" and tile.is_contiguous()
            and rows.stop <= store.window.shape[0])
    return _native_tile_candidates(native, store, tile, rows) if native and fits else \
        _torch_tile_candidates(store, tile, rows)


def chunk_maxima_bf16(tile, chunks):
    """Maxima [rows, chunks] (float32) of a bfloat16 tile [rows, columns] without NaN over
    ``chunks`` equal runs of columns, read as int16 (a fast integer reduction).

    Non-negative bfloat16 values order as their bits; a run whose largest bit
    pattern is negative holds only negative values (-inf included), whose maximum
    has the smallest.
    """
    bits = tile.view(torch.int16).view(tile.shape[0], chunks, -1)
    top = bits.amax(dim=2)
    negative = top < 0
    if bool(negative.any()):
        top = torch.where(negative, bits.amin(dim=2), top)
    return top.view(torch.bfloat16).float()


def _torch_tile_candidates(store, tile, rows):
    """``tile_candidates`` in torch operations. Runs of ``CHUNK`` columns whose maximum is
    below the floor are never read again: on random features at k = 8 that skips about 3
    in 4 of the runs that a test of whole rows would read."""
    width = tile.shape[1]
    tile_max = chunk_maxima_bf16(tile, 1)[:, 0]
    near = (tile_max >= store.kth_bound[rows] - store.window[rows]).nonzero()[:, 0]
    if near.numel() == 0:
        return None
    near_rows = near + rows.start
    near_tile = _near_tile(tile, near, store.k)
    padded_width = near_tile.shape[1]
    chunks = padded_width // CHUNK if store.k > 1 else 1  # k = 1: few rows come near
    chunk_max = chunk_maxima_bf16(near_tile, chunks) if chunks > 1 else tile_max[near, None]
    floor = _raise_bound(store, near_rows, chunk_max, tile_max[near], near_tile) - store.window[near_rows]
    pair_row, pair_chunk = (chunk_max >= floor[:, None]).nonzero().unbind(1)
    runs = near_tile.view(-1, padded_width // chunks).index_select(0, pair_row * chunks + pair_chunk).float()
    hit_pair, hit_col = (runs >= floor[pair_row, None]).nonzero().unbind(1)
    hit_row, hit_scores = near[pair_row[hit_pair]], runs[hit_pair, hit_col]
    hit_col += pair_chunk[hit_pair] * (padded_width // chunks)
    if padded_width > width:  # a floor of -inf (fewer than k scores yet) takes the padding too
        real = hit_col < width
        hit_row, hit_col, hit_scores = hit_row[real], hit_col[real], hit_scores[real]
    return hit_row, hit_col, hit_scores, near.numel() == tile.shape[0]


def _native_tile_candidates(native, store, tile, rows):
    """``tile_candidates`` in one pass of ``native`` (``native_screen()``), from pointers to
    the tile and to the store's float32 state."""
    top, bound, window = store.top[rows], store.kth_bound[rows], store.window[rows]
    hit_row, hit_col, hit_scores, near = native(tile.data_ptr(), tile.shape[0], tile.shape[1], store.k,
                                                top.data_ptr(), bound.data_ptr(), window.data_ptr())
    if near == 0:
        return None
    return (torch.from_numpy(hit_row), torch.from_numpy(hit_col), torch.from_numpy(hit_scores),
            near == tile.shape[0])


def _near_tile(tile, near, k):
    """The tile's rows ``near``; for top k, widened with -inf to whole runs of ``CHUNK``
    (a block with ignored references drops them, so its width is rarely a multiple)."""
    width = tile.shape[1]
    padded_width = width if k == 1 else -(-width // CHUNK) * CHUNK
    if padded_width == width:
        return tile if near.numel() == tile.shape[0] else tile.index_select(0, near)
    near_tile = tile.new_full((near.numel(), padded_width), float("-inf"))
    near_tile[:, :width] = tile[near]
    return near_tile


def _raise_bound(store, rows, chunk_max, tile_max, tile_rows):
    """Raise the k-th bound of ``store``'s ``rows`` with their tile rows [R, columns]; the
    new bound [R] (screen_tile.h does the same row by row).

    Each row keeps k of its screened scores; the smallest is a lower bound on
    its k-th best. A row's first tile gives its k best (a sort over the tile
    row, until it holds k scores); later tiles give their run maxima [R, chunks],
    merged where the tile maximum beats the bound. The bound lags the exact k-th
    best only where one run holds several of a row's best scores, and never exceeds it.
    """
    bound, k = store.kth_bound[rows], store.k
    if k == 1:
        bound = torch.maximum(bound, tile_max)
    elif bool(bound.isneginf().any()):  # rows short of k scores take their whole tile rows
        first = bound.isneginf()[:, None]
        offered = torch.cat([chunk_max.masked_fill(first, float("-inf")),
                             tile_rows.float().masked_fill(~first, float("-inf"))], dim=1)
        kept = torch.cat([store.top[rows], offered], dim=1).topk(k, dim=1).values
        store.top[rows], bound = kept, kept[:, -1]
    else:
        entering = (tile_max > bound).nonzero()[:, 0]
        if entering.numel():
            entering_rows = rows[entering]
            kept = torch.cat([store.top[entering_rows], chunk_max[entering]], dim=1).topk(k, dim=1).values
            store.top[entering_rows], bound[entering] = kept, kept[:, -1]
    store.kth_bound[rows] = bound
    return bound
