"""KeOps as a benchmark peer: ``LazyTensor`` argmax and argKmin, each probed in a child process first.

KeOps 2.3 killed the benchmark's process twice on an H200 (CUDA 13), with a segmentation
fault while generating its ArgMin code. So before its rows are timed, every wanted formula
runs once on 64 rows in a child process (which also fills KeOps' compile cache, so the
warm-up that follows is not a compile); if the child dies, the rows are skipped with its
signal and last line, and the benchmark goes on.
"""
import functools
import importlib.util
import os
import signal
import subprocess
import sys

import torch

PROBE_SECONDS = 300  # code generation and compiles on a cold cache (9 s for both on a 2-core CPU)


def _argmax(q, r):
    return (-(q * r).sum(-1)).argmin(dim=1)[:, 0]


def _l2_top8(q, r):
    return ((q - r) ** 2).sum(-1).argKmin(8, dim=1)


# name: (metric, k, formula)
FORMULAS = {"keops LazyTensor argmax": ("dot", 1, _argmax), "keops LazyTensor argKmin l2 k=8": ("l2", 8, _l2_top8)}


def probe(device, depth, names):
    """Each formula of ``names`` once on 64 float32 rows of ``depth`` (in ``crash_reason``'s child)."""
    from pykeops.torch import LazyTensor

    rows = torch.randn(64, depth, device=device)
    for name in names:
        FORMULAS[name][2](LazyTensor(rows[:, None, :]), LazyTensor(rows[None, :, :]))


def crash_reason(statement, timeout):
    """None when Python ``statement`` runs cleanly in a child process (with this process's
    import path); else why not, ending with the last line the child printed."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    try:
        child = subprocess.run([sys.executable, "-u", "-c", statement], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout,
                               env=environment)
    except subprocess.TimeoutExpired:
        return f"its probe in a child process ran past {timeout} s"
    except OSError as error:
        return f"its probe process did not start ({error})"
    if child.returncode == 0:
        return None
    last = " ".join((child.stdout.strip().splitlines() or ["no output"])[-1].split())[:160]
    if child.returncode > 0:
        return f"its probe in a child process failed ({last})"
    try:
        name = signal.Signals(-child.returncode).name
    except ValueError:
        name = f"signal {-child.returncode}"
    return f"it killed a probe process ({name}; last line: {last})"


def keops_rows(query, reference, keep):
    """(name, metric, k, run, skip, prepare) of each KeOps row ``keep`` takes: ``prepare``
    probes them all once, before the first row's warm-up, and returns a skip reason or None."""
    if importlib.util.find_spec("pykeops") is None:
        return [("keops", "dot", 1, None, "pykeops is not installed (pip install pykeops)", None)]
    names = [name for name in FORMULAS if keep(name)]
    statement = (f"from refmatch.bench_keops import probe; "
                 f"probe({str(query.device)!r}, {query.shape[1]}, {names!r})")
    prepare = functools.cache(lambda: crash_reason(statement, PROBE_SECONDS))
    rows, refs = query.float(), reference.float()  # KeOps computes in float32; cast once, untimed

    def run(formula):
        from pykeops.torch import LazyTensor

        return formula(LazyTensor(rows[:, None, :]), LazyTensor(refs[None, :, :]))
    return [(name, *FORMULAS[name][:2], functools.partial(run, FORMULAS[name][2]), None, prepare) for name in names]
