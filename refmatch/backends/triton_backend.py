"""Triton backend: the fused kernels of ``refmatch.kernels`` behind the op contract."""
import importlib.util

import torch

from ..kernels.match_tiles import interpret_flag
from .custom_op import (MAX_FUSED_SLOTS, capability_reason, constant_once, device_capability, fused_kernel_limits,
                        register_classwise_op, register_match_op)
from .class_ranges import classwise_over_ranges
from .scoring import finalize_class_scores, finalize_scores, host_read_allowed, kernel_metric_and_stat

_FUSED_OPS = f"fused argmax, top-k (k <= {MAX_FUSED_SLOTS}) and class-wise max (C <= {MAX_FUSED_SLOTS})"


@constant_once
def triton_version():
    """The installed triton's (major, minor); read once (``status`` runs on every call)."""
    import triton

    return tuple(int(part) for part in triton.__version__.split("+")[0].split(".")[:2])


def _dotted(version):
    return ".".join(map(str, version))


def _kernel_inputs(query, reference):
    if interpret_flag() and query.dtype == torch.bfloat16:
        # The interpreter computes bfloat16 dots wrongly; bf16 -> fp32 is exact and
        # the kernel accumulates in fp32 anyway, so results keep their meaning.
        return query.float(), reference.float()
    return query, reference


def match_fused(query, reference, ignored, k, metric):
    """(score [N, k], index [N, k]) from the fused Triton kernel; see ``match_chunked``."""
    from refmatch.kernels.match_launch import match_topk

    kernel_metric, stat = kernel_metric_and_stat(reference, metric, ignored)
    oriented, index = match_topk(*_kernel_inputs(query, reference), stat, kernel_metric, k)
    return finalize_scores(oriented, index, query, reference, metric)


def classwise_fused(query, reference, labels, ignored, num_classes, metric):
    """[N, C] best score per class from the fused Triton kernel; see ``classwise_chunked``.

    The k = 1 kernel runs over class-aligned bank ranges (``class_ranges``; a bank out of
    class order is sorted, a copy): the same loop as ``match``. Under CUDA graph capture,
    which allows no host read of the class counts, and where the k = 1 kernel does not
    compile (``_argmax_kernel_compiles``), the kernel keeps C running maxima a row instead."""
    from refmatch.kernels.match_launch import classwise_max, fill_splits, range_maxima

    kernel_metric, stat = kernel_metric_and_stat(reference, metric, ignored)
    kernel_query, kernel_reference = _kernel_inputs(query, reference)
    if host_read_allowed(labels) and _argmax_kernel_compiles(query.device):
        oriented = classwise_over_ranges(
            kernel_reference, labels, stat, ignored, num_classes, lambda bank: fill_splits(kernel_query, bank.shape[0]),
            lambda bank, bank_stat, starts: range_maxima(kernel_query, bank, bank_stat, kernel_metric, starts))
    else:
        oriented = classwise_max(kernel_query, kernel_reference, stat, labels, kernel_metric, num_classes)
    return finalize_class_scores(oriented, query, metric)


def _argmax_kernel_compiles(device):
    """False on sm_100 with triton < 3.9, which fails to compile the k = 1 kernel there
    (its TritonNvidiaGPUOptimizeTMemLayoutsPass; seen with 3.6, 3.9 compiles it)."""
    return device.type != "cuda" or device_capability(device)[0] != 10 or triton_version() >= (3, 9)


class TritonBackend:
    """Fused argmax, top-k (k <= 64) and class-wise max (C <= 64) for CUDA tensors
    (and CPU tensors under TRITON_INTERPRET=1)."""

    name = "triton"

    def __init__(self):
        self.op = register_match_op(self.name, match_fused)
        self.classwise_op = register_classwise_op(self.name, classwise_fused)

    def status(self):
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install triton; Linux x86_64)"
        try:
            version = triton_version()
        except Exception as error:  # installed but broken (a missing library, a mismatched build)
            return False, f"triton is installed but does not import: {type(error).__name__}: {error}"
        if version < (3, 0):
            return False, f"triton {_dotted(version)} is older than the 3.0 the kernel needs (pip install 'triton>=3')"
        if interpret_flag():
            # The kernel leaves NaN scores to maxnum reductions; interpreters before triton 3.8
            # reduce with np.max or np.maximum, where NaN wins (wrong indices, no error).
            if version < (3, 8):
                return False, (f"TRITON_INTERPRET=1 with triton {_dotted(version)} computes wrong results "
                               "for NaN scores: the interpreter needs triton >= 3.8")
            return True, f"{_FUSED_OPS}; TRITON_INTERPRET=1: CPU tensors run in the interpreter"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device; CPU tensors run only under TRITON_INTERPRET=1 (slow; for tests)"
        return True, f"{_FUSED_OPS} for CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"

    def decline_reason(self, problem):
        available, reason = self.status()
        if not available:
            return reason
        if problem.device.type == "cpu" and not interpret_flag():
            return "CPU tensors run only under TRITON_INTERPRET=1 (slow; meant for tests)"
        if problem.device.type not in ("cpu", "cuda"):
            return f"runs on CUDA tensors, got device {problem.device}"
        if problem.device.type == "cuda":
            capability = device_capability(problem.device)
            # Before sm_80 its bf16 and tf32 dots fall back to FMAs that spill (6 KB a thread on sm_75).
            reason = capability_reason(problem.device, capability, "bf16 / tf32 tensor-core dots")
            if reason:
                return reason
            if problem.op == "match" and problem.k == 1 and not _argmax_kernel_compiles(problem.device):
                return (f"triton {_dotted(triton_version())} fails to compile the k = 1 kernel for "
                        "sm_100 (its TritonNvidiaGPUOptimizeTMemLayoutsPass; seen with 3.6, 3.9 compiles it): "
                        "upgrade triton; top-k and class-wise run here")
        return fused_kernel_limits(problem)
