"""Class-wise best score on the CUDA backend: the fused k = 1 kernel over class-aligned
bank ranges (``class_ranges``). Finding the ranges reads the class counts on the host,
so this path cannot be captured in a CUDA graph (it says so; Triton's can).
"""
from .class_ranges import classwise_over_ranges
from .scoring import finalize_class_scores, host_read_allowed, kernel_metric_and_stat


def classwise_fused(query, reference, labels, ignored, num_classes, metric):
    """[N, C] best score per class from the fused CUDA kernel; see ``classwise_chunked``."""
    from .cuda_backend import default_splits, launch_match

    if not host_read_allowed(labels):
        raise RuntimeError("refmatch: the CUDA class-wise max reads class counts on the host, which CUDA graph "
                           "capture does not allow; use backend='triton' (or 'torch') inside a captured graph")
    kernel_metric, stat = kernel_metric_and_stat(reference, metric, ignored)

    def range_maxima(bank, bank_stat, starts):
        return launch_match(query, bank, bank_stat, kernel_metric, splits=starts.shape[0] - 1, split_starts=starts)[2]
    oriented = classwise_over_ranges(reference, labels, stat, ignored, num_classes,
                                     lambda bank: default_splits(query, bank), range_maxima)
    return finalize_class_scores(oriented, query, metric)
