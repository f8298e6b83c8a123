import contextlib
import importlib
import os

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. It must be
# chosen before triton.jit decorates the kernels, so before refmatch.kernels loads, and
# before triton itself loads: its own jitted helpers (tl.max's combine function) are
# decorated then, and a test that unsets the variable must not be the first to import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    with contextlib.suppress(ImportError):
        importlib.import_module("triton.language")

pytest_plugins = ["cuda_worker_guard"]  # a worker whose CUDA context broke leaves (xdist)

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if HAS_CUDA else "cpu"  # where the backend tests run
FUSED = ["triton"] if (HAS_CUDA or INTERPRETING) else []  # the Triton kernel runs here (cuda: its own tests)
BACKENDS = ["torch"] + FUSED


def hopper_build_and_device():
    """Whether the cuda backend's wgmma kernel can run: a compute capability 9.0 GPU and a
    build with sm_90a code."""
    if not HAS_CUDA or torch.cuda.get_device_capability() != (9, 0):
        return False
    from refmatch.backends.cuda_backend import _built_for_hopper, native_module
    return native_module() is not None and _built_for_hopper()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["native top-k", "torch walk"])
def both_cpu_walks(request, monkeypatch):
    """A torch-backend test on both float32 CPU walks: refmatch._C's fused top-k (where built for
    this CPU) and the torch GEMM walk. Other backends' cases run once."""
    from refmatch.backends import cpu_topk

    backend = request.node.callspec.params.get("backend", "torch")
    if request.param == "native top-k" and not cpu_topk.native_isas():
        pytest.skip("refmatch._C has no fused top-k for this CPU")
    if request.param == "native top-k" and request.node.get_closest_marker("torch_walk_only"):
        pytest.skip("the fused top-k ignores the torch walk's tiles: both sides would run the same code")
    if request.param == "torch walk":
        if backend != "torch":
            pytest.skip("one run: the variant is the torch backend's")
        monkeypatch.setenv("REFMATCH_CPU_TOPK", "0")
