"""One ``torch.library.custom_op`` per backend, all with the same schema.

Registering the backend call as an opaque op with a fake (meta) implementation
lets ``torch.compile(fullgraph=True)`` and CUDA graphs trace code that calls
``refmatch.match`` without looking inside the kernels.
"""
import functools
from typing import Optional

import torch

from .scoring import accumulation_dtype


MAX_FUSED_SLOTS = 64  # top-k entries or classes a fused kernel keeps per row
MIN_CAPABILITY = (8, 0)  # bf16 / tf32 tensor-core dots, cp.async
# Ops by name, registered once per process: a second custom_op of a name replaces the first, and
# when the second's library is collected torch frees the operator that the first's holders still
# call (a use-after-free: every backend object made after the registry's, as tests make them, and
# collected, left refmatch.match crashing or raising std::bad_alloc later).
_REGISTERED = {}


def constant_once(function):
    """``function`` computed once per arguments, and a constant to torch.compile, which runs it
    instead of tracing it (an lru_cache alone is traced through, with a warning)."""
    cached = functools.lru_cache(maxsize=None)(function)
    return torch.compiler.assume_constant_result(functools.wraps(function)(lambda *args: cached(*args)))


def device_capability(device):
    """(major, minor) compute capability of a CUDA device or index (None index: the current
    device; torch caches the device's properties)."""
    return torch.cuda.get_device_capability(device)


def capability_reason(device, capability, needs):
    """Why a fused kernel declines CUDA ``device`` of ``capability`` (major, minor): below
    MIN_CAPABILITY, ``needs`` saying what it lacks; None otherwise."""
    if tuple(capability) < MIN_CAPABILITY:
        return f"needs compute capability >= 8.0 ({needs}); {device} has {capability[0]}.{capability[1]}"
    return None


def fused_kernel_limits(problem):
    """Why a fused kernel (argmax, top-k, class-wise max) cannot take ``problem``, or None."""
    if problem.dtype == torch.float64:
        return "float64 runs on the torch backend only"
    reduction = "classwise" if problem.op == "classwise" else "argmax" if problem.k == 1 else "topk"
    if reduction == "topk" and problem.k > MAX_FUSED_SLOTS:
        return f"the fused top-k keeps at most k={MAX_FUSED_SLOTS} per row, got k={problem.k}; use backend='torch'"
    if reduction == "classwise" and problem.num_classes > MAX_FUSED_SLOTS:
        return (f"the fused class-wise max keeps at most {MAX_FUSED_SLOTS} classes, "
                f"got num_classes={problem.num_classes}; use backend='torch'")
    return None


def register_match_op(backend_name, impl):
    """Register ``refmatch::match_<backend_name>`` (once: later calls return the first op).

    ``impl(query [B, D, H, W], reference [M, D], ignored [M] bool or None, k, metric)``
    must return (score [N, k], index [N, k] int64) with N = B * H * W.
    """
    return _registered_once(f"refmatch::match_{backend_name}", lambda: _match_op(backend_name, impl))


def register_classwise_op(backend_name, impl):
    """Register ``refmatch::classwise_max_<backend_name>`` (once: later calls return the first op).

    ``impl(query [B, D, H, W], reference [M, D], labels [M], ignored [M] bool or None,
    num_classes, metric)`` must return the best score per class, [N, C].
    """
    return _registered_once(f"refmatch::classwise_max_{backend_name}", lambda: _classwise_op(backend_name, impl))


def _registered_once(name, register):
    if name not in _REGISTERED:
        _REGISTERED[name] = register()
    return _REGISTERED[name]


def _match_op(backend_name, impl):
    @torch.library.custom_op(f"refmatch::match_{backend_name}", mutates_args=())
    def match_op(query: torch.Tensor, reference: torch.Tensor, ignored: Optional[torch.Tensor], k: int,
                 metric: str) -> tuple[torch.Tensor, torch.Tensor]:
        return impl(query, reference, ignored, k, metric)

    @match_op.register_fake
    def _(query, reference, ignored, k, metric):
        rows = query.shape[0] * query.shape[2] * query.shape[3]
        score = query.new_empty((rows, k), dtype=accumulation_dtype(query.dtype))
        return score, query.new_empty((rows, k), dtype=torch.int64)

    return match_op


def _classwise_op(backend_name, impl):
    @torch.library.custom_op(f"refmatch::classwise_max_{backend_name}", mutates_args=())
    def classwise_op(query: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor,
                     ignored: Optional[torch.Tensor], num_classes: int, metric: str) -> torch.Tensor:
        return impl(query, reference, labels, ignored, num_classes, metric)

    @classwise_op.register_fake
    def _(query, reference, labels, ignored, num_classes, metric):
        rows = query.shape[0] * query.shape[2] * query.shape[3]
        return query.new_empty((rows, num_classes), dtype=accumulation_dtype(query.dtype))

    return classwise_op
