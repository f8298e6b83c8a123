"""Class-wise best score on the chunked torch backend (any number of classes).

The walk over reference blocks that ``match_chunked`` takes too
(``score_tiles.scored_tiles``); each score tile is reduced per class with one
``scatter_reduce(amax)`` over the block's labels into a running [N, C] maximum. A block of one class (the common case:
ReferenceBank stores class by class) takes a plain row max instead; finding those
blocks costs one host read per call, skipped under torch.compile and CUDA graph
capture. The N x M matrix never exists. Where the CPU's fused walk (``cpu_topk``, with
its bfloat16 screen) applies, each class takes one k = 1 match instead: over its range
of a bank stored class by class, else over a copy of its rows made when its turn comes
(the largest class, never the whole bank, at once).
"""
import torch

from . import cpu_topk
from .class_ranges import class_ranges, stored_by_class
from .score_tiles import block_of, block_sizes, query_rows, scored_tiles
from .scoring import accumulation_dtype, as_maps, finalize_class_scores, host_read_allowed
from .torch_backend import match_rows


def _single_class_blocks(labels, block_m):
    """{block: label} of the reference blocks whose labels are all one class (one host read)."""
    padded = torch.cat([labels, labels[-1:].expand(-labels.shape[0] % block_m)])  # repeat the last label
    blocks = padded.view(-1, block_m)
    lowest, highest = blocks.amin(dim=1), blocks.amax(dim=1)
    return {block: label for block, (label, same) in enumerate(zip(lowest.tolist(), (lowest == highest).tolist()))
            if same}


def classwise_chunked(query, reference, labels, ignored, num_classes, metric, tile_bytes=None, block_m=None,
                      screen=None):
    """Best score per class.

    Args:
        query: [B, D, H, W] maps ([N, D] rows as ``rows.T[None, :, :, None]``).
        reference: [M, D]; labels: [M] int64 in [0, num_classes), ignored rows included.
        ignored: [M] bool, True for references that never count, or None.
        metric: "cosine", "dot" or "l2".
        tile_bytes, block_m: overrides of the tile budget (tests).
        screen: whether the per-class k = 1 fused walks screen in bfloat16 where they
            can; None decides by size, as ``match_chunked`` does.
    Returns:
        [N, C]: best similarity per class (-inf where a class has no reference),
        or for "l2" the smallest squared distance (+inf where none).
    """
    rows = query_rows(query)
    best = torch.full((rows.shape[0], num_classes), float("-inf"), device=query.device,
                      dtype=accumulation_dtype(rows.dtype))
    parts = None
    if host_read_allowed(labels) and cpu_topk.applies(rows, reference, 1):
        # one fused walk per class: its range, or a copy of its rows (never the whole bank's)
        by_class = _class_ranges if stored_by_class(labels, ignored) else _gathered_classes
        parts = by_class(reference, labels, ignored, num_classes)
    for cls, part, part_ignored in parts or ():
        best[:, cls] = match_rows(rows, part, part_ignored, 1, metric, tile_bytes, block_m, screen)[0][:, 0]
        del part, part_ignored  # a gathered class copy, freed before the next is gathered
    if parts is None:
        walk_block_m, block_n = block_sizes(rows, reference, tile_bytes, block_m)
        _walk_classes(rows, reference, labels, ignored, metric, best, walk_block_m, block_n)
    return finalize_class_scores(best, as_maps(rows), metric)  # norms over contiguous rows


def _class_ranges(reference, labels, ignored, num_classes):
    """[(class, its rows [M_c, D], their ignored mask or None)] of a bank stored class by class: views."""
    starts, owners = class_ranges(labels, ignored, num_classes, target_ranges=1)  # one range per class
    return [(cls, reference[start:end], block_of(ignored, start, end - start))
            for cls, start, end in zip(owners.tolist(), starts[:-1].tolist(), starts[1:].tolist()) if end > start]


def _gathered_classes(reference, labels, ignored, num_classes):
    """(class, its counted rows [M_c, D], None) one class at a time, each a copy made when its
    turn comes, so the largest class is the most that is copied at once."""
    counted = labels if ignored is None else labels.masked_fill(ignored, num_classes)  # ignored: a class past C
    present = torch.bincount(counted, minlength=num_classes + 1)[:num_classes].nonzero()[:, 0].tolist()
    return ((cls, reference[(counted == cls).nonzero()[:, 0]], None) for cls in present)


def _walk_classes(rows, reference, labels, ignored, metric, best, block_m, block_n):
    """Raise the running per-class maxima ``best`` [N, C] one reference block at a time."""
    # A one-class block takes a row max; a scatter into few classes is an atomic
    # pile-up on a GPU (46 s against 3 s for k = 1 on an H200 at 262144 x 1M x 128).
    single_class = _single_class_blocks(labels, block_m) if host_read_allowed(labels) else {}
    for row0, col0, tile in scored_tiles(rows, reference, ignored, metric, block_m, block_n):
        target = best[row0:row0 + block_n]
        label = single_class.get(col0 // block_m)
        if label is None:
            target.scatter_reduce_(1, labels[col0:col0 + block_m].expand(tile.shape[0], -1), tile, "amax")
        else:
            target[:, label] = torch.maximum(target[:, label], tile.amax(dim=1))
