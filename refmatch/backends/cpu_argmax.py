"""The CPU fused argmax (k = 1, float32) of ``refmatch._C``: the torch backend's walk
without its score tile (csrc/cpu_argmax_isa.cpp).

The walk prepares reference blocks in torch as before (normalised for cosine, -|r|^2
and -inf biases for l2 and ignored rows), up to ``PREPARED_BYTES`` at a time; the
native pass scores a block in registers and keeps a running best per row and vector
lane. Rows are split over ``torch.get_num_threads()`` threads, each call holding no
GIL. Few, large calls: torch's OpenMP threads spin for a while after each torch
operation, and calls made among such operations ran 15 % slower. The extra memory
stays fixed: one prepared block, and the lane state of ``ROW_CHUNK`` rows.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from .cuda_backend import native_module

PREPARED_BYTES = 32 << 20  # references prepared per native call
ROW_CHUNK = 131072         # query rows per lane state: 32 MiB at 32 lanes
ISA_NAMES = {"avx512": "AVX-512", "avx2": "AVX2"}
_INDEX_LIMIT = 2**31       # the native pass keeps int32 indices
_pools = {}                # (process id, threads) -> executor: a forked child starts its own


def native_isas():
    """Vector widths the fused argmax can run at here, widest first ("avx512", "avx2"), or the
    one ``REFMATCH_CPU_ARGMAX`` names; empty where ``unavailable_reason()`` says why."""
    if unavailable_reason():
        return []
    held, wanted = list(native_module().cpu_argmax_isas()), os.environ.get("REFMATCH_CPU_ARGMAX")
    return [wanted] if wanted in held else held


def unavailable_reason():
    """Why the fused argmax does not run here, or None."""
    module, wanted = native_module(), os.environ.get("REFMATCH_CPU_ARGMAX")
    if wanted == "0":
        return "REFMATCH_CPU_ARGMAX=0"
    if module is None:
        return "refmatch._C is not built"
    if not hasattr(module, "cpu_argmax_isas"):
        return "refmatch._C predates it: rebuild"
    held = module.cpu_argmax_isas()
    if not held:
        return "built without it (not x86-64 GCC or Clang) or a CPU without AVX2 and FMA"
    if wanted not in (None, "", "1", *held):
        return f"REFMATCH_CPU_ARGMAX={wanted}: this CPU and build run {', '.join(held)} (or 0 for off)"
    return None


def applies(rows, reference, k):
    """Whether a walk of [N, D] ``rows`` (operand dtype) against ``reference`` takes the fused argmax."""
    return (k == 1 and rows.device.type == "cpu" and rows.dtype == torch.float32 and rows.shape[0] > 0
            and reference.shape[0] < _INDEX_LIMIT and bool(native_isas()))


def _pool(threads):
    key = (os.getpid(), threads)  # a fork leaves the parent's executor without its threads
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="refmatch-cpu-argmax")
    return _pools[key]


def argmax_walk(rows, num_refs, prepared_block, alpha, isa=None):
    """Oriented best (score [N, 1] float32, index [N, 1] int64; -inf and -1 where nothing scores).

    Args:
        rows: [N, D] float32 query rows.
        num_refs: M, the references the walk covers.
        prepared_block: (col0, count) -> ([count, D] float32 references from col0 on, at most
            count of them, bias [count] or None), as the walk prepares them.
        alpha: score = alpha * q.r + bias (2 for l2's 2 q.r - |r|^2, else 1).
        isa: a width from ``native_isas()``; default its first.
    """
    module = native_module()
    isa = isa or native_isas()[0]
    width, (num_rows, dim) = module.cpu_argmax_width(isa), rows.shape
    rows, refs_per_call = rows.contiguous(), max(1, PREPARED_BYTES // (4 * dim))
    score = torch.empty(num_rows, 1, dtype=torch.float32)  # explicit: the default dtype may be float64
    index = torch.empty(num_rows, 1, dtype=torch.int64)
    for row0 in range(0, num_rows, ROW_CHUNK):
        chunk = rows[row0:row0 + ROW_CHUNK]
        state_score = torch.full((chunk.shape[0], width), float("-inf"), dtype=torch.float32)
        state_index = torch.full((chunk.shape[0], width), -1, dtype=torch.int32)
        for col0 in range(0, num_refs, refs_per_call):
            block, bias = prepared_block(col0, refs_per_call)
            block, bias = block.contiguous(), None if bias is None else bias.contiguous()
            bias_pointer = 0 if bias is None else bias.data_ptr()
            _each_row_part(chunk.shape[0], lambda begin, end: module.cpu_argmax_rows(
                isa, chunk.data_ptr(), chunk.shape[0], dim, block.data_ptr(), block.shape[0], bias_pointer, alpha,
                col0, state_score.data_ptr(), state_index.data_ptr(), begin, end))
        score[row0:row0 + chunk.shape[0], 0], index[row0:row0 + chunk.shape[0], 0] = _fold_lanes(state_score,
                                                                                                 state_index)
    return score, index


def _each_row_part(num_rows, run):
    """``run(begin, end)`` over contiguous parts of the rows, one per torch thread."""
    threads = max(1, min(torch.get_num_threads(), num_rows // 64))
    bounds = [num_rows * part // threads for part in range(threads + 1)]
    if threads == 1:
        run(0, num_rows)
        return
    list(_pool(threads).map(run, bounds[:-1], bounds[1:]))  # re-raises a part's exception


def _fold_lanes(state_score, state_index):
    """Per row: the best lane score, and the lowest index among the lanes that hold it."""
    best = state_score.amax(dim=1)
    tied = torch.where(state_score == best[:, None], state_index, _INDEX_LIMIT - 1)
    return best, tied.amin(dim=1).to(torch.int64)
