"""Class-aligned bank ranges: the class-wise max as k = 1 maxima over ranges of one class.

A fused k = 1 kernel already cuts the bank into ranges and keeps each range's best
per query row. When every range holds one class, those [S, N] partial bests are the
per-class maxima: one scatter-max folds them into [N, C], and the N x M matrix never
exists. A bank stored class by class in ascending order (as ReferenceBank stores it;
ignored rows anywhere) is used in place; any other order is sorted by label first,
which copies the bank (O(M D) extra memory). Finding the ranges reads the class
counts on the host (one sync per call), so callers check ``host_read_allowed`` first.
The CUDA and Triton backends take their class-wise max this way; the torch backend
takes one screened match per class through ``class_ranges``.
"""
import torch

MIN_RANGE_ROWS = 512  # shorter ranges cost more in launch tails than they add in parallelism


def stored_by_class(labels, ignored):
    """True when the labels of counted (not ignored) rows never decrease, as
    ReferenceBank stores them (one host read)."""
    counted = labels if ignored is None else labels[~ignored]
    return counted.numel() < 2 or bool((counted[1:] >= counted[:-1]).all())


def sorted_by_label(reference, labels, stat, ignored):
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


def fold_range_maxima(partial, owners, num_classes):
    """[N, C] per-class maxima (-inf for a class without a range) from the per-range
    bests ``partial`` [S, N] of ranges whose classes are ``owners`` [S]."""
    best = partial.new_full((partial.shape[1], num_classes), float("-inf"))
    return best.scatter_reduce_(1, owners[None, :].expand(partial.shape[1], -1), partial.T, "amax")


def classwise_over_ranges(reference, labels, stat, ignored, num_classes, target_ranges, range_maxima):
    """[N, C] oriented per-class maxima from a backend's k = 1 kernel over class ranges.

    Args:
        reference: [M, D]; labels: [M] in [0, C) for counted rows; stat: [M] per-reference
            term (empty for dot); ignored: [M] bool or None.
        target_ranges: ``(reference) -> int``, the ranges that fill the device for the bank
            the kernel gets (sorted by label: a copy where the labels were not grouped); a
            class is cut into several when needed.
        range_maxima: ``(reference, stat, starts [S + 1]) -> [S, N]`` each range's best.
    """
    reference, labels, stat, ignored = sorted_by_label(reference, labels, stat, ignored)
    starts, owners = class_ranges(labels, ignored, num_classes, target_ranges(reference))
    return fold_range_maxima(range_maxima(reference, stat, starts), owners, num_classes)
