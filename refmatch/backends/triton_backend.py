"""Triton backend: the fused kernel of ``refmatch.kernels.match`` behind the op contract."""
import importlib.util
import os

import torch

from .custom_op import fused_kernel_limits, register_match_op
from .scoring import finalize_scores, reference_stat


def _interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def match_fused(query, reference, k, metric):
    """(score [N, 1], index [N, 1]) from the fused Triton kernel; see ``match_chunked``."""
    from refmatch.kernels.match import match_argmax

    if _interpreting() and query.dtype == torch.bfloat16:
        # The interpreter computes bfloat16 dots wrongly; bf16 -> fp32 is exact and
        # the kernel accumulates in fp32 anyway, so results keep their meaning.
        query, reference = query.float(), reference.float()
    oriented, index = match_argmax(query, reference, reference_stat(reference, metric), metric)
    oriented, index = oriented[:, None], index[:, None]
    return finalize_scores(oriented, index, query, metric), index


class TritonBackend:
    """Fused kernel for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1)."""

    name = "triton"

    def __init__(self):
        self.op = register_match_op(self.name, match_fused)

    def status(self):
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install triton; Linux x86_64)"
        if _interpreting():
            return True, "fused kernel; TRITON_INTERPRET=1: CPU tensors run in the interpreter"
        return True, "fused kernel for CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"

    def decline_reason(self, problem):
        available, reason = self.status()
        if not available:
            return reason
        if problem.device.type == "cpu" and not _interpreting():
            return "CPU tensors run only under TRITON_INTERPRET=1 (slow; meant for tests)"
        if problem.device.type not in ("cpu", "cuda"):
            return f"runs on CUDA tensors, got device {problem.device}"
        return fused_kernel_limits(problem)
