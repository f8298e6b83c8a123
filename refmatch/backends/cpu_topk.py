"""The CPU fused top-k (1 <= k <= MAX_K, float32) of ``refmatch._C``: the torch backend's
walk without its score tile (csrc/cpu_topk_isa.cpp).

The walk prepares reference blocks in torch as before (normalised for cosine, -|r|^2
and -inf biases for l2 and ignored rows), up to ``PREPARED_BYTES`` at a time; the
native pass scores a block in registers and merges into each row's sorted top-k only
the scores above its k-th. Rows are split over ``torch.get_num_threads()`` threads of
torch's own OpenMP team (csrc/cpu_team.cpp; the calling thread's, as for torch's own
operations; threads started per call where torch has none, and in a child forked after
refmatch was imported), each call holding no GIL: after each parallel torch operation
that team's workers spin for some milliseconds, and threads of our own shared the
cores with them (a k = 1 walk after the norms of its window: 60 ms against 51 at
8192 x 16384 x 64 on 2 cores). A child forked from a parent whose torch ran in parallel
hangs in torch's own parallel operations, which a match runs (and, forked before refmatch
was imported, in the walk: the team's threads are gone): set ``torch.set_num_threads(1)`` there.
Extra memory: one prepared block, and int32 indices beside the [N, k] result; with the
bfloat16 screen (``window``), bfloat16 copies of the query rows (N D 2 bytes) and of a
512-reference sub-block per thread.
"""
import os

import torch

from .cuda_backend import native_module
from .settings import environment

PREPARED_BYTES = 32 << 20  # references prepared per native call, at most
# A native call holds no GIL, so a Ctrl-C waits for it: its rows x references x D x (1 + k / 64)
# (top-k insertions) stay near this per thread (0.1-0.4 s a call on 2 Zen 4 cores; a whole block of
# 65536 rows took 5 s).
WORK_PER_THREAD = 2**34
MIN_REFS_PER_CALL = 2048   # fewer references a call: the Python loop's cost shows
MAX_K = 1024               # above it, with most scores entering, the GEMM walk catches up (k = M = 4096: 1.24x)
ISA_NAMES = {"avx512": "AVX-512", "avx2": "AVX2"}
_INDEX_LIMIT = 2**31       # the native pass keeps int32 indices
_team = {"library": None}  # the OpenMP runtime file native passes run on, "" for none; None: not yet asked


def screen_available():
    """Whether ``topk_walk`` can screen in bfloat16 here (``_C`` built with it, an AVX-512 CPU
    with AVX512_BF16, and the fused walk on at the "avx512" width)."""
    module = native_module()
    return (getattr(module, "cpu_screen_available", lambda: False)() and native_isas()[:1] == ["avx512"])


def native_isas():
    """Vector widths the fused top-k can run at here, widest first ("avx512", "avx2"), or the
    one ``REFMATCH_CPU_TOPK`` names; empty where ``unavailable_reason()`` says why."""
    held, reason = _widths()
    wanted = os.environ.get("REFMATCH_CPU_TOPK")
    return [] if reason else [wanted] if wanted in held else held


def unavailable_reason():
    """Why the fused top-k does not run here, or None."""
    return _widths()[1]


def _widths():
    """(the widths _C holds and this CPU runs, why the fused top-k does not run here or None)."""
    module, wanted = native_module(), os.environ.get("REFMATCH_CPU_TOPK")
    if wanted == "0":
        return [], "REFMATCH_CPU_TOPK=0"
    if module is None:
        return [], "refmatch._C is not built"
    if not hasattr(module, "cpu_topk_isas"):
        return [], "refmatch._C predates it: rebuild"
    held = list(module.cpu_topk_isas())
    if not held:
        return held, "built without it (not x86-64 GCC or Clang) or a CPU without AVX2 and FMA"
    if wanted not in (None, "", "1", *held):
        return held, f"REFMATCH_CPU_TOPK={wanted}: this CPU and build run {', '.join(held)} (or 0 for off)"
    return held, None


def forced(setting):
    """``REFMATCH_CPU_TOPK=setting`` ("0", "avx512", "avx2") inside the block, as it was after."""
    return environment({"REFMATCH_CPU_TOPK": setting})


def applies(rows, reference, k):
    """Whether a top-k walk of [N, D] ``rows`` (operand dtype) against ``reference`` takes the fused
    one (``check_setting`` has refused a width that cannot run here, before the call)."""
    return (1 <= k <= MAX_K and rows.device.type == "cpu" and rows.dtype == torch.float32 and rows.shape[0] > 0
            and reference.shape[0] < _INDEX_LIMIT and bool(native_isas()))


def check_setting(spelling_only=False):
    """ValueError where ``REFMATCH_CPU_TOPK`` names a width that cannot run here: float32 CPU calls
    refuse it rather than quietly walk GEMM tiles. ``spelling_only`` (under torch.compile, which
    cannot ask ``_C`` what it holds): only a value that names no width at all."""
    wanted = os.environ.get("REFMATCH_CPU_TOPK")
    if spelling_only:
        if wanted not in (None, "", "0", "1", *ISA_NAMES):
            raise ValueError(f"REFMATCH_CPU_TOPK={wanted}: not a setting; use 0 (off), 1 or unset (the widest "
                             f"this CPU runs), or a width: {', '.join(ISA_NAMES)}")
        return
    held, reason = _widths()
    if wanted not in (None, "", "0", "1", *held):
        raise ValueError(reason if reason.startswith("REFMATCH_CPU_TOPK=") else f"REFMATCH_CPU_TOPK={wanted}: {reason}")


def openmp_team():
    """The file of torch's OpenMP runtime, whose team the fused walk runs on, or "" where it
    starts threads per call (asked once per process: torch's parallel backend is OpenMP and
    ``_C`` finds the runtime torch's calls bind to)."""
    if _team["library"] is None:
        module = native_module()
        openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
        attached = module is not None and openmp and module.attach_openmp_team(torch._C.__file__)
        _team["library"] = module.openmp_team_library() if attached else ""
    return _team["library"]


def _forked():
    """In a forked child the team's threads are gone: its GOMP_parallel would wait for them."""
    if _team["library"]:
        native_module().detach_openmp_team()
    _team["library"] = ""


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def topk_walk(rows, num_refs, prepared_block, alpha, k, window=None):
    """Oriented top-k (score [N, k] float32, index [N, k] int64), best first, ties to the lowest
    index; -inf and -1 in the slots nothing fills; and (row, vector of references) pairs visited
    and those of them scored in float32 (all without a screen).

    Args:
        rows: [N, D] float32 query rows.
        num_refs: M, the references the walk covers.
        prepared_block: (col0, count) -> ([count, D] float32 references from col0 on, at most
            count of them, bias [count] or None), as the walk prepares them.
        alpha: score = alpha * q.r + bias (2 for l2's 2 q.r - |r|^2, else 1).
        k: 1 <= k <= ``MAX_K``.
        window: float32 [N] bounds on |bfloat16 screened - float32 score| per row (not finite:
            that row's tile walks unscreened), or None: no screen (``screen_available()``).
    Runs at the first width of ``native_isas()``; the screen's results are the walk's.
    """
    module, isa = native_module(), native_isas()[0]
    (num_rows, dim), rows = rows.shape, rows.contiguous()
    threads = max(1, torch.get_num_threads())
    refs_per_call, rows_per_call = _call_shape(num_rows, dim, k, threads)
    # the sorted lists the native pass merges into; explicit dtypes: the default may be float64
    score = torch.full((num_rows, k), float("-inf"), dtype=torch.float32)
    index = torch.full((num_rows, k), -1, dtype=torch.int32)
    if window is not None and (window.shape != (num_rows,) or window.device.type != "cpu"
                               or bool((window < 0).any())):  # the native pass reads it by pointer
        raise ValueError(f"window must be [N] = [{num_rows}] non-negative bounds on the CPU, got "
                         f"{tuple(window.shape)} on {window.device}")
    window = None if window is None else window.float().contiguous()
    openmp_team()  # attaches the native passes to torch's team, once
    counts = []
    for col0 in range(0, num_refs, refs_per_call):
        block, bias = prepared_block(col0, refs_per_call)
        block, bias = block.contiguous(), None if bias is None else bias.contiguous()
        for begin in range(0, num_rows, rows_per_call):  # each row's list is its own: same results
            counts.append(module.cpu_topk_rows(
                isa, rows.data_ptr(), num_rows, dim, block.data_ptr(), block.shape[0],
                0 if bias is None else bias.data_ptr(), alpha, col0, k, score.data_ptr(), index.data_ptr(), begin,
                min(begin + rows_per_call, num_rows), 0 if window is None else window.data_ptr(), threads))
        del block, bias  # freed before the next block is prepared
    return score, index.to(torch.int64), tuple(map(sum, zip((0, 0), *counts)))


def _call_shape(num_rows, dim, k, threads):
    """(references, rows) per native call, near ``WORK_PER_THREAD`` a thread: fewer references first
    (each thread packs a call's references once, so splitting rows repeats that), then fewer rows,
    down to 64 a thread."""
    pair_cost, work = dim * (1 + k / 64), WORK_PER_THREAD * threads
    widest = max(1, PREPARED_BYTES // (4 * dim))
    refs = min(widest, max(MIN_REFS_PER_CALL, int(work // (num_rows * pair_cost))))
    return refs, max(64 * threads, int(work // (refs * pair_cost)))
