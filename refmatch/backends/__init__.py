"""Backend registry: who can run a call, and why not.

Each backend states its availability once (``status``) and, per call, why it
cannot take given inputs (``decline_reason``). ``auto`` walks a per-device
preference list, fastest first.
"""
from dataclasses import dataclass

from .cuda_backend import CudaBackend
from .torch_backend import TorchBackend
from .triton_backend import TritonBackend

_BACKENDS = {backend.name: backend for backend in (CudaBackend(), TritonBackend(), TorchBackend())}
NAMES = tuple(_BACKENDS)
# The CUDA kernels pass bench/gpu_suite.sh but ran at about 0.6x the Triton kernel's speed
# on an H200 (README, Benchmarks), so "auto" prefers Triton; backend="cuda" runs them.
_PREFERENCE = {"cuda": ("triton", "torch")}
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


def select(problem, requested):
    """The backend object that runs ``problem``; ``requested`` is a name or "auto"."""
    if requested != "auto":
        backend = _BACKENDS[requested]
        reason = backend.decline_reason(problem)
        if reason is not None:
            raise ValueError(f"backend={requested!r} cannot run this call: {reason}")
        return backend
    for name in _PREFERENCE.get(problem.device.type, ("torch",)):
        if _BACKENDS[name].decline_reason(problem) is None:
            return _BACKENDS[name]
    raise AssertionError("the torch backend accepts every valid call")
