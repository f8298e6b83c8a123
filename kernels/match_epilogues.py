"""Per-tile reductions of the fused Triton ``match`` kernel.

Each takes one tile of oriented scores [BLOCK_N, BLOCK_M] (larger is better; padding
already -inf, or labelled -1 for class-wise; NaN left in, as maxnum reductions skip it
and it fails every compare) whose columns are bank rows ``tile_start`` + ``local`` of the
program's split (both int32; ``local`` = 0 .. BLOCK_M - 1), and folds it into a per-row
running state. Tiles arrive in ascending bank order, which the tie rule (lowest index
wins) relies on.
"""
import triton
import triton.language as tl


@triton.jit
def lowest_column(scores, tile_best, local, BLOCK_M: tl.constexpr):
    """[BLOCK_N] int32: the lowest tile column holding each row's ``tile_best``."""
    return tl.min(tl.where(scores == tile_best[:, None], local[None, :], BLOCK_M), axis=1)


@triton.jit
def offer_argmax(scores, local, tile_start, best, best_index, BLOCK_M: tl.constexpr):
    """k = 1. One compare per score; locate only when some row improves."""
    tile_best = tl.max(scores, axis=1)
    improved = tile_best > best
    if tl.max(improved.to(tl.int32), axis=0) > 0:
        tile_index = tile_start + lowest_column(scores, tile_best, local, BLOCK_M)
        best_index = tl.where(improved, tile_index, best_index)
        best = tl.where(improved, tile_best, best)
    return best, best_index


@triton.jit
def worst_slot(best, best_index, slots, SLOTS_PAD: tl.constexpr):
    """(worst score, its slot) of each row's unsorted top-k list.

    Among equal worst scores the highest index is the worst (it loses the tie);
    empty slots hold (-inf, -1) and padding slots +inf, so they fill first and
    are never evicted.
    """
    worst = tl.min(best, axis=1)
    at_worst = best == worst[:, None]
    worst_index = tl.max(tl.where(at_worst, best_index, -2), axis=1)
    at_worst = at_worst & (best_index == worst_index[:, None])
    return worst, tl.min(tl.where(at_worst, slots[None, :], SLOTS_PAD), axis=1)


@triton.jit
def offer_topk(scores, local, tile_start, best, best_index, worst, worst_at, slots, BLOCK_M: tl.constexpr,
               SLOTS_PAD: tl.constexpr):
    """Top-k behind a per-row threshold: a tile whose row max does not beat the
    row's worst kept score costs one compare per score. Otherwise the tile's best
    remaining score (lowest column among equals) replaces the worst, until no row
    can improve. Strict '>' is the tie rule: an equal score comes later in bank
    order, so it has the higher index and loses.
    """
    tile_best = tl.max(scores, axis=1)
    entering = tile_best > worst
    # A loop directly in the tile loop's body makes that an "outer loop", which triton
    # (3.6, 3.9) does not software-pipeline; its check looks at the body's own operations
    # only, so a loop inside a branch leaves the bank loads pipelined.
    if tl.max(entering.to(tl.int32), axis=0) > 0:
        while tl.max(entering.to(tl.int32), axis=0) > 0:
            col = lowest_column(scores, tile_best, local, BLOCK_M)
            replace = entering[:, None] & (slots[None, :] == worst_at[:, None])
            best = tl.where(replace, tile_best[:, None], best)
            best_index = tl.where(replace, tile_start + col[:, None], best_index)
            scores = tl.where(entering[:, None] & (local[None, :] == col[:, None]), float("-inf"), scores)
            worst, worst_at = worst_slot(best, best_index, slots, SLOTS_PAD)
            tile_best = tl.max(scores, axis=1)
            entering = tile_best > worst
    return best, best_index, worst, worst_at


@triton.jit
def offer_classwise(scores, labels, full_tile, best, slots):
    """Running per-class maxima [BLOCK_N, C_PAD]; padding columns carry label -1. A full
    tile of one class (as ReferenceBank stores a bank, class by class) costs about one
    max per score; other tiles visit each class present in them (in a branch, so that
    the tile loop stays pipelined: see offer_topk)."""
    lowest = tl.min(tl.where(labels >= 0, labels, 1 << 30), axis=0)
    highest = tl.max(labels, axis=0)
    if full_tile and lowest == highest:
        best = tl.where(slots[None, :] == lowest, tl.maximum(best, tl.max(scores, axis=1)[:, None]), best)
    else:
        for label in range(lowest, highest + 1):
            class_best = tl.max(tl.where(labels[None, :] == label, scores, float("-inf")), axis=1)
            best = tl.where(slots[None, :] == label, tl.maximum(best, class_best[:, None]), best)
    return best
