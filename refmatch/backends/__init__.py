"""Backend registry: who can run a call, and why not.

Each backend states its availability once (``status``) and, per call, why it
cannot take given inputs (``decline_reason``). ``auto`` walks a per-device
preference list, fastest first.
"""
from dataclasses import dataclass

import torch

from .cuda_backend import CudaBackend, runs_default_hopper_kernel
from .scoring import tf32_allowed
from .torch_backend import TorchBackend
from .triton_backend import TritonBackend

_BACKENDS = {backend.name: backend for backend in (CudaBackend(), TritonBackend(), TorchBackend())}
NAMES = tuple(_BACKENDS)
# "auto" prefers Triton on GPUs: on an H200 it was faster than the CUDA kernels for dot k = 1
# (cuda took 13-27 % longer), top-k and class-wise (README, Backends). Where the CUDA kernel
# measured faster, auto takes it first:
# - float32 at torch's default "highest" precision, k = 1: Triton's exact ("ieee") dot runs on
#   FMAs and spills (11 KB a thread on sm_90 at D = 128), and the CUDA kernel's 3xTF32 took
#   1063 ms against Triton's 1713 (D = 64, NVIDIA-H200-float32-keops-2026-11-26);
# - l2 and cosine k = 1 in bfloat16 on the default wgmma kernel (TMA loads), D = 64 to 128:
#   1.5-11 % less time than Triton in all eight comparisons of sessions 22 and 23 (H200).
#   float16 and other D were not timed against Triton on that kernel.
_PREFERENCE = {"cuda": ("triton", "torch")}
_CUDA_FIRST = ("cuda", "triton", "torch")
_CUDA_FASTER_WIDTHS = (64, 128)  # the D range the l2 / cosine comparison measured
_STATUS = {}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here, and why (not): ``name`` ("torch", "triton" or "cuda"),
    ``available`` (it can run a call here), ``reason`` (what it runs on, or what it lacks)."""

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


def backends() -> list[BackendStatus]:
    """Status of every backend in registry order (cuda, triton, torch): a list of ``BackendStatus``."""
    return [BackendStatus(name, *_status(name)) for name in NAMES]


def _status(name):
    if name not in _STATUS:
        _STATUS[name] = _BACKENDS[name].status()
    return _STATUS[name]


def _preference(problem):
    """Backend names ``auto`` tries for ``problem``, in order."""
    # torch.compile cannot trace the precision setting: compiled calls keep the usual order.
    if problem.device.type != "cuda" or problem.op != "match" or problem.k != 1 or torch.compiler.is_compiling():
        return _PREFERENCE.get(problem.device.type, ("torch",))
    exact_float32 = problem.dtype == torch.float32 and not tf32_allowed(problem.dtype)
    if exact_float32 or _hopper_kernel_measured_faster(problem):
        return _CUDA_FIRST
    return _PREFERENCE["cuda"]


def _hopper_kernel_measured_faster(problem):
    """Whether the default wgmma kernel beat Triton on an H200 for a k = 1 match like ``problem``."""
    narrowest, widest = _CUDA_FASTER_WIDTHS
    return (problem.dtype == torch.bfloat16 and problem.metric in ("l2", "cosine")
            and narrowest <= problem.dim <= widest and problem.dim % 8 == 0  # 16-byte rows: TMA loads
            and _status("cuda")[0]
            and runs_default_hopper_kernel(problem.device, problem.dim))


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
