"""CUDA backend: the fused tensor-core kernels compiled into the torch-free ``refmatch._C``.

The kernels (csrc/include/refmatch/match_kernel.cuh, mma.sync on sm_80+;
match_kernel_sm90.cuh, wgmma on sm_90a) take raw device pointers, strides and
the caller's stream; this module allocates their outputs and split workspace
with torch on the query's device and applies the per-row fix-up.

On sm_90 with an sm_90a build the Hopper kernel serves the calls it can
(``REFMATCH_CUDA_HOPPER=0``, read at each call: mma.sync only), with 256 query rows
per CTA where the tile fits (D <= 192 on H100/H200; 128 above): half the bank
traffic per FLOP, 1.7x faster at D = 128 on an H200. Its other variants (query rows,
the query in registers, TMA loads) are picked by environment variables: see
``hopper_variants``. Top-k takes it only where ``REFMATCH_CUDA_HOPPER_TOPK=wgmma``.
"""
import ctypes
import sys
from pathlib import Path

import torch

from .cuda_archs import missing_code_reason
from .custom_op import capability_reason, constant_once, fused_kernel_limits, register_classwise_op, register_match_op
from .custom_op import device_capability as _capability
from .hopper_variants import (HOPPER_ROWS, WIDEST_256_ROWS, hopper_query_in_registers, hopper_switched_off,
                              hopper_shared_lists, hopper_tma_loads, hopper_topk, rows_setting)
from .scoring import finalize_scores, kernel_metric_and_stat, tf32_allowed

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
METRIC_CODES = {"dot": 0, "cosine": 1, "l2": 2}
BUILD_FAILED_NOTE = Path(__file__).resolve().parent.parent / "_C_build_failed.txt"  # setup.py writes it


def native_module():
    """``refmatch._C`` or None when it was not built."""
    try:
        from refmatch import _C
    except ImportError:
        return None
    return _C


def _driver_library_loads():
    """Whether the NVIDIA driver's library loads, as the CUDA runtime loads it."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def _no_device_reason(error):
    """Why ``refmatch._C.cuda_device_count()`` found no device, from its error string.
    Without a driver the runtime reports "CUDA driver version is insufficient for CUDA
    runtime version", which reads as "update your driver"; that case is said plainly."""
    if not error:
        return "no CUDA device"
    if not _driver_library_loads():
        return f"no CUDA driver or device found (CUDA error: {error})"
    return error


@constant_once  # torch.compile cannot trace _C's pybind calls
def _build_archs():
    return native_module().build_info()["cuda_archs"]


def _built_for_hopper():
    """Whether the build carries sm_90a code: an entry "90a", or CMake's "90a-real" / "90a-virtual"."""
    return any(entry.split("-")[0] == "90a" for entry in _build_archs().split(","))


def hopper_enabled(device):
    """True on a compute capability 9.0 device with a build that has sm_90a code,
    unless ``REFMATCH_CUDA_HOPPER=0``; the wgmma kernel still takes only the calls it serves."""
    return not hopper_switched_off() and _capability(device) == (9, 0) and _built_for_hopper()


def runs_default_hopper_kernel(device, dim):
    """Whether a k = 1 call of width ``dim`` on ``device`` runs the default wgmma kernel,
    ``wgmma-256-tma`` (256 query rows, query in shared memory, TMA loads): the build and card
    allow it, the three ``hopper_variants.SETTINGS`` are at their defaults and D <= 192."""
    return (hopper_enabled(device) and dim <= WIDEST_256_ROWS and rows_setting() == HOPPER_ROWS[0]
            and not hopper_query_in_registers() and hopper_tma_loads())


def hopper_rows(device, k=1):
    """Query rows per CTA asked of the wgmma kernel for a k-call on ``device``: 0 where
    it is off (``hopper_enabled``; top-k runs mma.sync unless ``REFMATCH_CUDA_HOPPER_TOPK=wgmma``),
    else ``REFMATCH_CUDA_HOPPER_ROWS`` (256, the default, or 128; the kernel takes 128 where
    256 rows do not fit, see ``hopper_variants.documented_hopper_kernel``)."""
    rows = rows_setting()
    return rows if (k == 1 or hopper_topk()) and hopper_enabled(device) else 0


def kernel_name(query, reference, k=1):
    """The kernel a k-call of the cuda backend runs for query [B, D, H, W] maps against
    reference [M, D]: "mma.sync" or a ``hopper_variants.HOPPER_VARIANTS`` name ("wgmma",
    "wgmma-256", with "-rs" for the query in registers and "-tma" for TMA loads)."""
    device = query.device
    with torch.cuda.device(device):  # as in run_kernel
        return native_module().match_kernel_name(query.shape[1], DTYPE_CODES[query.dtype], tf32_allowed(query.dtype),
                                                 device.index, hopper_rows(device, k), hopper_query_in_registers(),
                                                 reference.data_ptr(), *reference.stride(), reference.shape[0],
                                                 hopper_tma_loads(), k)


def match_argmax_cuda(query, reference, ref_stat, metric, *, splits=None):
    """Best reference per query row from the fused CUDA kernel, before the per-row fix-up.

    Args:
        query: [B, D, H, W] CUDA maps, read through their strides ([N, D] rows as
            ``rows.T[None, :, :, None]``); float32, float16 or bfloat16.
        reference: [M, D], same dtype and device (any strides; unit stride in D and
            4-byte aligned rows take the cp.async path).
        ref_stat: [M] float32 contiguous: 1/|r| (cosine), |r|^2 (l2), ignored (dot).
        metric: "dot", "cosine" or "l2".
        splits: number of bank ranges (default: enough to fill the device).

    Returns:
        (score [N] float32, index [N] int64) exactly like column 0 of
        ``refmatch.kernels.match_launch.match_topk`` at k = 1: q.r, q.r/|r| or 2 q.r - |r|^2;
        index -1 where no score but -inf or NaN exists (a +inf dot product is a match).
    """
    score, index, _ = launch_match(query, reference, ref_stat, metric, splits=splits)
    return score, index


def default_splits(query, reference, k=1):
    """Bank ranges that fill the query's device for [B, D, H, W] maps against reference [M, D],
    in the tiles of the kernel the call runs (an unaligned bank runs mma.sync's)."""
    batch, dim, height, width = query.shape
    if batch * height * width == 0:
        return 1
    with torch.cuda.device(query.device):  # as in run_kernel
        return native_module().match_splits(batch * height * width, reference.shape[0], dim,
                                            DTYPE_CODES[query.dtype], tf32_allowed(query.dtype), query.device.index,
                                            reference.data_ptr(), *reference.stride(), hopper_rows(query.device, k), k)


def run_kernel(query, reference, ref_stat, metric, out_score, out_index, *, splits, partials=(None, None),
               split_starts=None, k=1, ablate=0):
    """One launch of ``refmatch._C.match_argmax`` on the caller's stream (see match_cuda.h):
    k = 1 writes out_score / out_index [N] (partials [S, N] as split workspace);
    k > 1 writes sorted lists [S, N, k] into them. ablate: diagnostics only (the wgmma
    kernel's stages left out, ``bench/ablate_wgmma.py``; results meaningless)."""
    batch, dim, height, width = query.shape
    device = query.device
    # What the kernel assumes and cannot check: it reads the bank in the query's dtype, and
    # reads M per-reference terms. match() checks all this first; direct callers (bench, tests) may not.
    if reference.dtype != query.dtype or reference.device != device or reference.shape[1] != dim:
        raise ValueError(f"reference must be [M, {dim}] {query.dtype} on {device} like the query, got "
                         f"{tuple(reference.shape)} {reference.dtype} on {reference.device}")
    if metric != "dot" and ref_stat.numel() < reference.shape[0]:
        raise ValueError(f"{metric} needs a per-reference term for each of the M={reference.shape[0]} rows, "
                         f"got {ref_stat.numel()}")
    partial_score, partial_index = partials
    ref_stat = ref_stat.to(device=device, dtype=torch.float32).contiguous()
    if metric != "dot" and ref_stat.data_ptr() % 16:  # a sliced stat: TMA loads need it 16-byte aligned
        ref_stat = ref_stat.clone()
    # The kernel's device made current here (restored by torch only where a context exists):
    # the extension's own switch and restore would create one on device 0 in a process that
    # never set a device. The same in default_splits and kernel_name.
    with torch.cuda.device(device):
        native_module().match_argmax(
            query.data_ptr(), DTYPE_CODES[query.dtype], batch, dim, height, width, query.stride(),
            reference.data_ptr(), reference.shape[0], reference.stride(),
            ref_stat.data_ptr() if metric != "dot" else 0, METRIC_CODES[metric], tf32_allowed(query.dtype),
            out_score.data_ptr(), out_index.data_ptr(), splits,
            partial_score.data_ptr() if partial_score is not None else 0,
            partial_index.data_ptr() if partial_index is not None else 0,
            torch.cuda.current_stream(device).cuda_stream, device.index, hopper_rows(device, k),
            split_starts.data_ptr() if split_starts is not None else 0, k, hopper_query_in_registers(),
            hopper_tma_loads(), ablate, k > 1 and hopper_shared_lists(),
        )


def launch_match(query, reference, ref_stat, metric, *, splits=None, split_starts=None, ablate=0):
    """``match_argmax_cuda`` plus the per-range partial bests.

    split_starts: int64 [S + 1] on the device, non-decreasing in [0, M]: range s is
    bank rows [split_starts[s], split_starts[s + 1]) (S = splits); None: even ranges.
    Returns (score [N], index [N], partial scores [S, N]); each range's oriented
    best, -inf where it holds no score but -inf or NaN. ablate: see ``run_kernel``.
    """
    batch, _, height, width = query.shape
    num_rows, device = batch * height * width, query.device
    splits = splits or default_splits(query, reference)
    if split_starts is not None and (split_starts.dtype != torch.int64 or split_starts.device != device
                                     or split_starts.shape != (splits + 1,) or not split_starts.is_contiguous()):
        raise ValueError(f"split_starts must be a contiguous int64 [splits + 1] = [{splits + 1}] tensor on {device}, "
                         f"got {split_starts.dtype} {tuple(split_starts.shape)} on {split_starts.device}")
    score = torch.empty(num_rows, device=device, dtype=torch.float32)
    index = torch.empty(num_rows, device=device, dtype=torch.int64)
    partial_score = score[None] if splits == 1 else torch.empty(splits, num_rows, device=device,
                                                                dtype=torch.float32)
    partial_index = index[None] if splits == 1 else torch.empty_like(partial_score, dtype=torch.int64)
    if num_rows > 0:
        run_kernel(query, reference, ref_stat, metric, score, index, splits=splits,
                   partials=(partial_score, partial_index) if splits > 1 else (None, None),
                   split_starts=split_starts, ablate=ablate)
    return score, index, partial_score


def match_fused(query, reference, ignored, k, metric):
    """(score [N, k], index [N, k]) from the fused CUDA kernel; see ``match_chunked``."""
    from .cuda_topk import match_topk_cuda

    kernel_metric, stat = kernel_metric_and_stat(reference, metric, ignored)
    if k == 1:
        oriented, index = match_argmax_cuda(query, reference, stat, kernel_metric)
        oriented, index = oriented[:, None], index[:, None]
    else:
        oriented, index = match_topk_cuda(query, reference, stat, kernel_metric, k)
    return finalize_scores(oriented, index, query, reference, metric)


@constant_once  # torch.compile cannot trace _C's pybind calls
def _status():
    """CudaBackend.status, once a process: device count and build do not change."""
    module = native_module()
    if module is None:
        if BUILD_FAILED_NOTE.is_file():
            return False, (f"refmatch._C is not built: its build failed ({BUILD_FAILED_NOTE.read_text().strip()}); "
                           "pip install -v shows the compiler's output")
        return False, "refmatch._C is not built (reinstall with a C++ compiler and cmake; nvcc for CUDA)"
    info = module.build_info()
    if not info["cuda"]:
        return False, ("refmatch._C was built without CUDA (no nvcc, or REFMATCH_CUDA=0): reinstall with nvcc on "
                       "PATH or CUDA_HOME set; REFMATCH_CUDA=1 makes a missing nvcc stop the install")
    archs = ", ".join(f"sm_{arch}" for arch in info["cuda_archs"].split(","))
    count, error = module.cuda_device_count()
    if error or count == 0:
        return False, f"compiled for {archs}; no usable device: {_no_device_reason(error)}"
    hopper = (", wgmma kernel on sm_90, 256-row tiles up to D = 192, TMA loads (REFMATCH_CUDA_HOPPER=0: "
              "mma.sync; REFMATCH_CUDA_HOPPER_ROWS=128: 128-row tiles; REFMATCH_CUDA_HOPPER_QUERY=registers: "
              "query in registers; REFMATCH_CUDA_HOPPER_LOADS=cp.async: cp.async loads; "
              "REFMATCH_CUDA_HOPPER_TOPK=wgmma: top-k on it too, its lists in shared memory where they fit "
              "(REFMATCH_CUDA_HOPPER_TOPK_LISTS=global: in the outputs), not yet checked on a GPU)"
              if _built_for_hopper() else "")
    return True, (f"compiled for {archs}, {count} device(s); fused argmax, top-k (k <= 64) and class-wise "
                  f"max (C <= 64) kernels (mma.sync, sm_80+){hopper}")


class CudaBackend:
    """Fused tensor-core kernel for CUDA tensors on compute capability >= 8.0."""

    name = "cuda"

    def __init__(self):
        from .cuda_classwise import classwise_fused

        self.op = register_match_op(self.name, match_fused)
        self.classwise_op = register_classwise_op(self.name, classwise_fused)

    def status(self):
        """(available, reason); cached: device count and build do not change in a process."""
        return _status()

    def decline_reason(self, problem):
        available, reason = self.status()
        if not available:
            return reason
        if problem.device.type != "cuda":
            return f"runs on CUDA tensors, got device {problem.device}"
        capability = _capability(problem.device)
        return (capability_reason(problem.device, capability, "tensor-core mma.sync, cp.async")
                or missing_code_reason(_build_archs(), problem.device, capability) or fused_kernel_limits(problem))
