"""Backend registry: who can run a call, and why not.

Each backend states its availability once (``status``) and, per call, why it
cannot take given inputs (``decline_reason``). ``auto`` walks a per-device
preference list, fastest first.
"""
from dataclasses import dataclass

import torch

from .cuda_backend import CudaBackend
from .scoring import tf32_allowed
from .torch_backend import TorchBackend
from .triton_backend import TritonBackend

_BACKENDS = {backend.name: backend for backend in (CudaBackend(), TritonBackend(), TorchBackend())}
NAMES = tuple(_BACKENDS)
# The CUDA kernels pass bench/gpu_suite.sh but ran at about 0.6x the Triton kernel's speed
# on an H200 (README, Benchmarks), so "auto" prefers Triton; backend="cuda" runs them.
# Except float32 at torch's default "highest" precision, k = 1: Triton's exact ("ieee") dot
# runs on FMAs and spills (11 KB a thread on sm_90 at D = 128), and the CUDA kernel's 3xTF32
# took 1063 ms against Triton's 1713 on an H200 (D = 64, NVIDIA-H200-float32-keops-2026-11-26).
_PREFERENCE = {"cuda": ("triton", "torch")}
_EXACT_FLOAT32_PREFERENCE = ("cuda", "triton", "torch")
_STATUS = {}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, and why (not)."""

    name: str
    available: bool
    reason: str


@dataclass(frozen=True)
class MatchProblem:
    """What a backend needs to know to accept or decline a call."""

    device: object
    dtype: object
    k: int
    metric: str
    dim: int
    op: str = "match"           # or "classwise"
    num_classes: int = 0        # classwise only


def backends():
    """Status of every backend in registry order (cuda, triton, torch): a list of ``BackendStatus``."""
    return [BackendStatus(name, *_status(name)) for name in NAMES]


def _status(name):
    if name not in _STATUS:
        _STATUS[name] = _BACKENDS[name].status()
    return _STATUS[name]


def _preference(problem):
    """Backend names ``auto`` tries for ``problem``, in order."""
    # torch.compile cannot trace the precision setting: compiled calls keep the usual order.
    exact_float32 = problem.device.type == "cuda" and problem.dtype == torch.float32 and problem.op == "match" \
        and problem.k == 1 and not torch.compiler.is_compiling() and not tf32_allowed(problem.dtype)
    if exact_float32:
        return _EXACT_FLOAT32_PREFERENCE
    return _PREFERENCE.get(problem.device.type, ("torch",))


def select(problem, requested):
    """The backend object that runs ``problem``; ``requested`` is a name or "auto"."""
    if requested != "auto":
        backend = _BACKENDS[requested]
        reason = backend.decline_reason(problem)
        if reason is not None:
            raise ValueError(f"backend={requested!r} cannot run this call: {reason}")
        return backend
    for name in _preference(problem):
        if _BACKENDS[name].decline_reason(problem) is None:
            return _BACKENDS[name]
    raise AssertionError("the torch backend accepts every valid call")
