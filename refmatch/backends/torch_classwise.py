"""Class-wise best score on the chunked torch backend (any number of classes).

The same walk over reference blocks as ``match_chunked``; each score tile is
reduced per class with one ``scatter_reduce(amax)`` over the block's labels
into a running [N, C] maximum. A block of one class (the common case:
ReferenceBank stores class by class) takes a plain row max instead; finding those
blocks costs one host read per call, skipped under torch.compile and CUDA graph
capture. The N x M matrix never exists. Where the CPU's bfloat16 screen applies
(``torch_screening``), a bank stored class by class takes one k = 1 match per
class instead.
"""
import torch

from . import cpu_topk
from .class_ranges import class_ranges, sorted_by_label, stored_by_class
from .scoring import finalize_class_scores, host_read_allowed
from .torch_backend import _block_of, _drop_nan, _prepare_block, _score_tile, match_rows, tiling
from .torch_screening import screening_applies


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
        screen: a bank stored class by class (or sorted so, a copy, where the fused
            ``cpu_topk`` walk runs) takes one k = 1 match per class, each through the
            bfloat16 screen where it applies, else the walk; None decides by hardware
            and size, as ``match_chunked`` does.
    Returns:
        [N, C]: best similarity per class (-inf where a class has no reference),
        or for "l2" the smallest squared distance (+inf where none).
    """
    operand_dtype, dtype, rows, walk_block_m, block_n = tiling(query, reference, tile_bytes, block_m)
    best = torch.full((rows.shape[0], num_classes), float("-inf"), device=query.device, dtype=dtype)
    ranges, fused = None, cpu_topk.applies(rows, reference, 1)
    sorted_bank = fused and host_read_allowed(labels)
    if sorted_bank:  # one fused walk per class: a bank stored otherwise is sorted, a copy
        reference, labels, _, ignored = sorted_by_label(reference, labels, reference.new_empty(0), ignored)
    if sorted_bank or (screening_applies(rows, reference, 1, screen) and stored_by_class(labels, ignored)):
        starts, owners = class_ranges(labels, ignored, num_classes, target_ranges=1)  # one range per class
        ranges = [(cls, start, end) for cls, start, end in zip(owners.tolist(), starts[:-1].tolist(),
                                                                starts[1:].tolist()) if end > start]
    if screen is None and ranges and not fused and not all(screening_applies(rows, reference[start:end], 1)
                                                           for _, start, end in ranges):
        ranges = None  # a class too small to screen: one GEMM walk over the bank beats one per class
    for cls, start, end in ranges or ():
        best[:, cls] = match_rows(rows, reference[start:end], _block_of(ignored, start, end - start), 1, metric,
                                  tile_bytes, block_m, screen)[0][:, 0]
    if ranges is None:
        _walk_classes(rows, reference, labels, ignored, metric, best, operand_dtype, walk_block_m, block_n)
    return finalize_class_scores(best, query, metric)


def _walk_classes(rows, reference, labels, ignored, metric, best, operand_dtype, block_m, block_n):
    """Raise the running per-class maxima ``best`` [N, C] one reference block at a time."""
    num_rows, num_refs, dtype = rows.shape[0], reference.shape[0], best.dtype
    tile_buffer = torch.empty(min(block_n, num_rows) * block_m, device=rows.device, dtype=dtype)
    # A one-class block takes a row max; a scatter into few classes is an atomic
    # pile-up on a GPU (46 s against 3 s for k = 1 on an H200 at 262144 x 1M x 128).
    single_class = _single_class_blocks(labels, block_m) if host_read_allowed(labels) else {}
    for col0 in range(0, num_refs, block_m):
        block, bias, scale = _prepare_block(reference[col0:col0 + block_m], _block_of(ignored, col0, block_m),
                                            metric, operand_dtype, dtype)
        block_labels = labels[col0:col0 + block_m]
        for row0 in range(0, num_rows, block_n):
            row_block = rows[row0:row0 + block_n]
            tile = tile_buffer[: row_block.shape[0] * block.shape[0]].view(row_block.shape[0], -1)
            _drop_nan(_score_tile(row_block, block, bias, scale, metric, tile))
            target = best[row0:row0 + block_n]
            label = single_class.get(col0 // block_m)
            if label is None:
                target.scatter_reduce_(1, block_labels.expand(tile.shape[0], -1), tile, "amax")
            else:
                target[:, label] = torch.maximum(target[:, label], tile.amax(dim=1))
