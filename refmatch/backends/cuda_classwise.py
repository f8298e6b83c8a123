"""Class-wise best score on the CUDA backend: the fused k = 1 kernel over class-aligned bank ranges.

The kernel already cuts the bank into ranges (splits) and keeps each range's
best per query row. When every range holds one class, those partial bests are
the per-class maxima: [S, N] partials fold into [N, C] with one scatter-max,
and the N x M matrix never exists. A class is cut into several ranges when that
is needed to fill the GPU. A bank stored class by class in ascending order (as
ReferenceBank stores it; ignored rows anywhere) is used in place; any other
order is sorted by label first, which copies the bank (O(M D) extra memory).
Finding the ranges reads the class counts on the host (one sync per call), so
this path cannot be captured in a CUDA graph (it says so; Triton's can).
"""
import torch

from .scoring import finalize_class_scores, host_read_allowed, kernel_metric_and_stat

MIN_RANGE_ROWS = 512  # shorter ranges cost more in launch tails than they add in parallelism


def stored_by_class(labels, ignored):
    """True when the labels of counted (not ignored) rows never decrease, as
    ReferenceBank stores them (one host read)."""
    counted = labels if ignored is None else labels[~ignored]
    return counted.numel() < 2 or bool((counted[1:] >= counted[:-1]).all())


def _sorted_by_label(reference, labels, stat, ignored):
    """The bank (rows, labels, per-reference terms, ignored mask) with the labels of
    counted rows non-decreasing: as given when they already are, else sorted (stable)."""
    if stored_by_class(labels, ignored):
        return reference, labels, stat, ignored
    order = labels.argsort(stable=True)
    return (reference[order], labels[order], stat[order] if stat.numel() else stat,
            None if ignored is None else ignored[order])


def class_ranges(labels, ignored, num_classes, target_ranges):
    """(starts [S + 1] int64, class of each range [S] int64) on the labels' device.

    Counted rows (not ignored) have non-decreasing labels. Class c's rows are
    [its first counted row, the next present class's first counted row), the last
    class running to M; ignored rows inside a range never count (NaN scores). A
    class of n rows is cut into ceil(n / size) ranges, size = max(MIN_RANGE_ROWS,
    M / target_ranges).
    """
    num_refs = labels.shape[0]
    counted = torch.ones_like(labels, dtype=torch.bool) if ignored is None else ~ignored
    positions = counted.nonzero()[:, 0]
    counts = torch.bincount(labels[positions], minlength=num_classes)
    present = counts.nonzero()[:, 0]
    firsts = positions[(counts.cumsum(0) - counts)[present]]
    classes, begins = present.tolist(), firsts.tolist()
    if not classes:  # nothing counts: one empty range
        return labels.new_tensor([0, 0]), labels.new_tensor([0])
    size = max(MIN_RANGE_ROWS, -(-num_refs // max(1, target_ranges)))
    starts, owners = [], []
    for cls, begin, end in zip(classes, begins, begins[1:] + [num_refs]):
        pieces = -(-(end - begin) // size)
        step = -(-(end - begin) // pieces)
        cuts = list(range(begin, end, step))
        starts += cuts
        owners += [cls] * len(cuts)
    return labels.new_tensor(starts + [num_refs]), labels.new_tensor(owners)


def classwise_fused(query, reference, labels, ignored, num_classes, metric):
    """[N, C] best score per class from the fused CUDA kernel; see ``classwise_chunked``."""
    from .cuda_backend import default_splits, launch_match

    if not host_read_allowed(labels):
        raise RuntimeError("refmatch: the CUDA class-wise max reads class counts on the host, which CUDA graph "
                           "capture does not allow; use backend='triton' (or 'torch') inside a captured graph")
    kernel_metric, stat = kernel_metric_and_stat(reference, metric, ignored)
    reference, labels, stat, ignored = _sorted_by_label(reference, labels, stat, ignored)
    starts, owners = class_ranges(labels, ignored, num_classes, default_splits(query, reference.shape[0]))
    _, _, partial = launch_match(query, reference, stat, kernel_metric, splits=owners.shape[0],
                                 split_starts=starts)
    best = partial.new_full((partial.shape[1], num_classes), float("-inf"))
    best.scatter_reduce_(1, owners[None, :].expand(partial.shape[1], -1), partial.T, "amax")
    return finalize_class_scores(best, query, metric)
