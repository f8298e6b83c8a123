"""The Triton launcher (``refmatch.kernels.match_launch``): which tile shape a launch takes
(the register-capped shape where measured, the shared-memory ladder where a shape does
not load) and tl.dot's input precision. Launches are spied on or stood in for."""
import pytest
import torch

import refmatch
from conftest import DEVICE, HAS_CUDA, INTERPRETING

pytestmark = pytest.mark.skipif(not (HAS_CUDA or INTERPRETING),
                                reason="needs a CUDA device or TRITON_INTERPRET=1")


@pytest.mark.parametrize("capability, metric, k, dim, tile, expected", [
    ((9, 0), "dot", 1, 128, {}, True), ((9, 0), "dot", 1, 64, {}, True), ((9, 0), "dot", 1, 40, {}, True),
    ((9, 0), "dot", 1, 32, {}, False), ((9, 0), "dot", 1, 256, {}, False), ((8, 0), "dot", 1, 128, {}, False),
    ((9, 0), "l2", 1, 128, {}, False), ((9, 0), "dot", 8, 128, {}, False),
    ((9, 0), "dot", 1, 128, {"block_n": 64}, False)])
def test_two_programs_per_sm_only_where_measured(monkeypatch, capability, metric, k, dim, tile, expected):
    """The register cap of TWO_PROGRAMS_PER_SM goes to the dot argmax on sm_90 at D = 33..128 only,
    never under tile overrides, and stops for good once its compile spilled: over even bank
    ranges and over given ones (the class-wise max), each by its own compile."""
    from types import SimpleNamespace

    from refmatch.kernels import match_tiles as tiles
    monkeypatch.setattr(tiles, "interpret_flag", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(tiles, "_CAP_SPILLED", {})
    query = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, shape=(1, dim, 5, 5))
    reduction = "argmax" if k == 1 else "topk"
    capped = dict(tiles.TWO_PROGRAMS_PER_SM)
    assert tiles.launch_tile(query, metric, reduction, tile) == (capped if expected else tile)
    tiles._CAP_SPILLED[tiles.cap_key(query)] = True
    assert tiles.launch_tile(query, metric, reduction, tile) == tile
    assert tiles.launch_tile(query, metric, reduction, tile, ranges=True) == (capped if expected else tile)
    tiles._CAP_SPILLED[tiles.cap_key(query, ranges=True)] = True
    assert tiles.launch_tile(query, metric, reduction, tile, ranges=True) == tile


@pytest.mark.parametrize("setting, dtype, precision", [
    ("highest", torch.float32, "ieee"), ("high", torch.float32, "tf32"), ("medium", torch.float32, "tf32"),
    ("high", torch.float16, "ieee")])
def test_float32_follows_torch_matmul_precision(setting, dtype, precision, monkeypatch):
    """The Triton launch takes tl.dot's input precision from torch's setting (the CUDA kernel's
    TF32 choice reads the same tf32_allowed)."""
    from refmatch.backends.scoring import tf32_allowed
    from refmatch.kernels import match_launch as kernels

    class LaunchSpy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs["INPUT_PRECISION"])
                return real[grid](*args, **kwargs)
            return launch
    seen, real = [], kernels._match_kernel
    monkeypatch.setattr(kernels, "_match_kernel", LaunchSpy())
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        refmatch.match(torch.randn(3, 8, device=DEVICE).to(dtype), torch.randn(5, 8, device=DEVICE).to(dtype),
                       backend="triton")
        assert seen == [precision] and tf32_allowed(dtype) is (precision == "tf32")
    finally:
        torch.set_float32_matmul_precision(previous)


def test_a_shape_the_gpu_cannot_hold_steps_down_the_ladder(monkeypatch):
    """Where Triton refuses a shape for its shared memory (before anything runs), the launch
    takes the next step of shared_memory_ladder and keeps the one that loaded for later calls;
    explicit tile overrides are not changed, and a GPU that fits no step gets a named error."""
    from triton.runtime.errors import OutOfResources

    from refmatch.kernels import match_launch as kernels

    class SharedMemoryLimit:  # stands in for the jitted kernel: refuses what a small GPU would
        limit = 40_000

        def __getitem__(self, grid):
            def launch(*args, **config):
                shapes.append((config["BLOCK_N"], config["BLOCK_M"], config["BLOCK_D"], config["num_stages"]))
                needed = config["num_stages"] * config["BLOCK_M"] * config["BLOCK_D"] * 4
                if needed > self.limit:
                    raise OutOfResources(needed, self.limit, "shared memory")
            return launch

    kernel, shapes = SharedMemoryLimit(), []
    monkeypatch.setattr(kernels, "_match_kernel", kernel)
    monkeypatch.setattr(kernels, "interpret_flag", lambda: False)
    monkeypatch.setattr(kernels, "_FITTING_STEP", {})
    query, reference, stat = torch.randn(1, 100, 5, 1), torch.randn(300, 100), torch.empty(0)
    kernels.match_topk(query, reference, stat, "dot")
    assert shapes == [(128, 128, 128, 3), (128, 128, 128, 2), (128, 128, 64, 2), (128, 64, 64, 2)]
    shapes.clear()
    kernels.match_topk(query, reference, stat, "dot")
    assert shapes == [(128, 64, 64, 2)], "the shape that loaded is kept"
    shapes.clear()
    with pytest.raises(OutOfResources):
        kernels.match_topk(query, reference, stat, "dot", block_m=128)
    assert shapes == [(128, 128, 128, 3)], "explicit overrides run as given"
    kernel.limit = 0
    with pytest.raises(RuntimeError, match="no tile shape that fits this GPU.*backend='torch'"):
        kernels.match_topk(query[:, :50], reference[:, :50], stat, "dot")
