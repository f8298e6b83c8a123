"""Class-wise best score on the CUDA backend: the fused k = 1 kernel over class-aligned
bank ranges (``class_ranges``). Finding the ranges reads the class counts on the host,
so this path cannot be captured in a CUDA graph (it says so; Triton's can).
"""
from .class_ranges import class_ranges, fold_range_maxima, sorted_by_label
from .scoring import finalize_class_scores, host_read_allowed, kernel_metric_and_stat


def classwise_fused(query, reference, labels, ignored, num_classes, metric):
    """[N, C] best score per class from the fused CUDA kernel; see ``classwise_chunked``."""
    from .cuda_backend import default_splits, launch_match

    if not host_read_allowed(labels):
        raise RuntimeError("refmatch: the CUDA class-wise max reads class counts on the host, which CUDA graph "
                           "capture does not allow; use backend='triton' (or 'torch') inside a captured graph")
    kernel_metric, stat = kernel_metric_and_stat(reference, metric, ignored)
    reference, labels, stat, ignored = sorted_by_label(reference, labels, stat, ignored)
    starts, owners = class_ranges(labels, ignored, num_classes, default_splits(query, reference.shape[0]))
    _, _, partial = launch_match(query, reference, stat, kernel_metric, splits=owners.shape[0],
                                 split_starts=starts)
    return finalize_class_scores(fold_range_maxima(partial, owners, num_classes), query, metric)
