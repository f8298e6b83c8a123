"""Benchmark of ``refmatch.match`` against the GEMM ceiling and the tools users would pick instead.

    refmatch bench                                    # CPU preset: N=8192, M 16K..256K, D 64/128, float32
    refmatch bench --device cuda --dtype bfloat16     # GPU preset: N=262144, M 64K..4M, D 32..256
    refmatch bench --sizes 8192x65536x128 --only torch faiss
    refmatch bench --device cuda --dtype bfloat16 --exclude keops   # a peer that crashes here
    python bench/bench_match.py ...                   # the same, from a checkout

For each size, in one process: the dense ``torch.mm`` of the same N, M, D (the
ceiling), naive ``(q @ r.T).max(1)`` and ``torch.cdist`` + argmin where the N x M
matrix fits, every refmatch backend (k = 1 with dot, l2 and cosine, k = 8 with dot, and the
class-wise max over 4 classes), and the peers that
are installed (FAISS flat search, KeOps, flash-kmeans' assignment kernel; see
bench_peers.py). It prints a table (median time after a warm-up, TFLOP/s as
2*N*M*D/time, ratio to the GEMM, peak extra memory, agreement with the float64
oracle) and writes bench/results/<machine>-<dtype>-<date>.{json,md,png}, with -2, -3 ...
appended when that name is taken (results are never replaced).
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import torch

import refmatch
from refmatch.atomic_file import write_atomic
from refmatch.bench_peers import all_methods
from refmatch.bench_plot import plot

RESULTS = Path("bench") / "results"
SLOW_SECONDS = 20.0


def cpu_model():
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine(device):
    """(file-name slug, description) of the device that runs the benchmark."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_model()} x{os.cpu_count()}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name.replace("(R)", "").replace("(TM)", "")).strip("-")
    return slug, name


def timed(fn, device, repeat):
    """Median seconds over ``repeat`` runs (the caller has warmed ``fn`` up)."""
    times = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


class PeakMemory:
    """Extra memory a block of code takes at its peak, in MiB: the CUDA allocator's
    peak on GPUs; on the CPU the resident set, sampled every millisecond."""

    def __init__(self, device):
        self.device, self.peak_mib = device, 0.0

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._done.is_set():
            self._peak = max(self._peak, self._rss())
            self._done.wait(0.001)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = self._rss()
            self._done = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._done.set()
            self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_mib = (peak - self._base) / 2**20


def oracle_best(query, reference, metric):
    """Float64 best score per row [N] (similarity for dot and cosine, distance for l2)."""
    return refmatch.match(query.double(), reference.double(), metric=metric, backend="torch").score


def agreement(index, query, reference, metric, best):
    """Fraction of rows whose returned (first) index scores within 1e-4 of the float64 best."""
    index = index.reshape(query.shape[0], -1)[:, 0].to(query.device).long()
    q, r = query.double(), reference.double()[index.clamp(min=0)]
    if metric == "l2":
        picked = (q - r).square().sum(1)
    else:
        picked = torch.nn.functional.cosine_similarity(q, r, eps=1e-12) if metric == "cosine" else (q * r).sum(1)
    return _close_fraction(picked, best, index >= 0)


def classwise_agreement(scores, best):
    """Fraction of rows whose best class-wise score is within 1e-4 of the float64 best."""
    return _close_fraction(scores.double().amax(dim=1), best, torch.ones_like(best, dtype=torch.bool))


def _close_fraction(picked, best, valid):
    close = (picked - best).abs() <= 1e-4 * best.abs().clamp(min=1)
    return (close & valid).double().mean().item()


def run_size(n, m, d, dtype, device, repeat, fits_bytes, only=None, exclude=None):
    """Yields one result row per method for one (N, M, D), the GEMM ceilings first."""
    generator = torch.Generator().manual_seed(n * 31 + m * 7 + d)
    query = torch.randn(n, d, generator=generator).to(device=device, dtype=dtype)
    reference = torch.randn(m, d, generator=generator).to(device=device, dtype=dtype)
    methods = list(all_methods(query, reference, fits_bytes, exclude))
    _check_filters([method.name for method in methods if method.metric != "-"], only, exclude)
    best = {metric: oracle_best(query, reference, metric) for metric in ("dot", "l2", "cosine")}
    gemm_tflops = None
    for method in methods:
        if not _wanted(method.name, only, exclude) and method.metric != "-":
            continue
        row = {"method": method.name, "metric": method.metric, "k": method.k, "n": n, "m": m, "d": d,
               "dtype": str(dtype).replace("torch.", "")}
        if method.skip:
            yield {**row, "skipped": method.skip}
            continue
        begin = time.perf_counter()
        with PeakMemory(device) as memory:  # also the warm-up
            index = method.run()
        first = time.perf_counter() - begin
        # A method slower than SLOW_SECONDS (KeOps on a CPU) is reported from that run;
        # one slower than a second is timed once more.
        seconds = first if first > SLOW_SECONDS else timed(method.run, device, repeat if first < 1 else 1)
        if index is None:
            agreed = None
        elif method.classwise:
            agreed = classwise_agreement(index, best[method.metric])
        else:
            agreed = agreement(index, query, reference, method.metric, best[method.metric])
        tflops = method.flops / seconds / 1e12
        if method.metric == "-":  # the ceilings come first; the ratio is to the faster
            gemm_tflops = max(gemm_tflops or 0.0, tflops)
        yield {**row, "seconds": seconds, "tflops": tflops, "peak_mib": memory.peak_mib, "agreement": agreed,
               "ratio_to_gemm": tflops / gemm_tflops}


def _line(r):
    size = f"| {r['n']} | {r['m']} | {r['d']} | {r['dtype']} | {r['method']} | {r['metric']} | {r['k']} |"
    if "skipped" in r:
        return f"{size} skipped: {r['skipped']} | | | | |"
    agree = "" if r["agreement"] is None else f"{100 * r['agreement']:.2f} %"
    ratio = f"{r['ratio_to_gemm']:.2f}" if "ratio_to_gemm" in r else ""
    return (f"{size} {1e3 * r['seconds']:.1f} | {r['tflops']:.4f} | {ratio} | {r['peak_mib']:.0f} | {agree} |")


def markdown(rows):
    header = ["| N | M | D | dtype | method | metric | k | time (ms) | TFLOP/s | vs GEMM | peak extra MiB | agreement |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(header + [_line(r) for r in rows])


def git_commit():
    """Short commit of the checkout, with "+dirty" when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


PRESETS = {
    "cpu": ["8192x16384x64", "8192x65536x64", "8192x262144x64", "8192x16384x128", "8192x65536x128",
            "8192x262144x128"],
    "cuda": [f"262144x{m}x{d}" for d in (32, 64, 128, 256) for m in (65536, 262144, 1048576, 4194304)],
}


def size_triple(text):
    """argparse type of an NxMxD size: (N, M, D) positive ints."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"a size is NxMxD with positive integers (e.g. 8192x65536x128), got {text!r}")
    return tuple(int(part) for part in parts)


def tag_name(text):
    """argparse type of --tag: letters, digits, '-' and '_' (a '.' would read as a file suffix)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise argparse.ArgumentTypeError(f"a tag takes letters, digits, '-' and '_', got {text!r}")
    return text


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def fresh_stem(stem):
    """``stem``, or ``stem-2``, ``stem-3`` ...: the first that names no results file yet, so a
    second run of a day (or a run inside a checkout) never replaces committed or earlier results."""
    candidate, number = stem, 1
    while any(candidate.with_suffix(suffix).exists() for suffix in (".json", ".md")):
        number += 1
        candidate = stem.with_name(f"{stem.name}-{number}")
    return candidate


def main(argv=None):
    parser = argparse.ArgumentParser(prog="refmatch bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="default: float32")
    parser.add_argument("--sizes", nargs="+", type=size_triple, help="NxMxD sizes (default: the device's preset)")
    parser.add_argument("--only", nargs="+", help="time only methods whose name holds one of these words")
    parser.add_argument("--exclude", nargs="+", help="leave out methods whose name holds one of these words")
    parser.add_argument("--repeat", type=positive_int, default=3, help="timed runs per method (default: 3)")
    parser.add_argument("--fits-gib", type=float, default=8.0,
                        help="largest dense N x M buffer to try (default: 8)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--tag", type=tag_name,
                        help="added to the file names, so runs of one day stay apart (e.g. sweep)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but torch {torch.__version__} sees no CUDA device")
    if args.device == "cpu" and args.dtype == "float16":
        print("warning: CPUs have no fast float16 GEMM (the 2048^3 ceiling alone can take a minute), so "
              "the ceiling and the 'vs GEMM' ratios say little; bfloat16 or float32 compare better",
              file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    name, description = machine(args.device)
    meta = {"device": description, "cpu": cpu_model(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "date": date.today().isoformat(), "commit": git_commit(),
            "torch": torch.__version__, "refmatch": refmatch.__version__, "peers": peer_versions()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = fresh_stem(args.out / "-".join([name, args.dtype] + ([args.tag] if args.tag else []) + [meta["date"]]))
    print(markdown([]))
    rows = []
    for n, m, d in args.sizes or [size_triple(size) for size in PRESETS[args.device]]:
        print(f"# {n}x{m}x{d}: float64 oracle and GEMM ceilings first", file=sys.stderr, flush=True)
        for row in run_size(n, m, d, dtype, args.device, args.repeat, args.fits_gib * 2**30, args.only,
                              args.exclude):
            rows.append(row)
            print(_line(row), flush=True)
            write_results(stem, meta, rows)  # after every row: a killed run keeps what it measured
        figure = plot(rows, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json, .md" + (" and .png" if figure else " (no plot: matplotlib missing)"))


def _wanted(name, only, exclude):
    """A method named ``name`` passes --only (a word of it in the name) and --exclude (none)."""
    return (not only or any(word in name for word in only)) and not any(word in name for word in exclude or ())


def _check_filters(names, only, exclude):
    """Raise ValueError, before any timing, when --only / --exclude leave none of the method
    ``names`` (the ceilings aside)."""
    if not any(_wanted(name, only, exclude) for name in names):
        given = " ".join(f"--{flag} {' '.join(words)}" for flag, words in (("only", only), ("exclude", exclude))
                         if words)
        raise ValueError(f"{given} leaves no method but the GEMM ceilings; methods: {', '.join(names)}")


def write_results(stem, meta, rows):
    """The rows so far as <stem>.json and <stem>.md, each replaced atomically."""
    table = (f"Device: {meta['device']}; torch {meta['torch']}; peers {meta['peers']}; commit {meta['commit']}; "
             f"{meta['date']}\n\n{markdown(rows)}\n")
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows}, indent=2)), (".md", table)):
        write_atomic(stem.with_suffix(suffix), lambda file, text=text: file.write(text), mode="w")


def peer_versions():
    """Installed versions of the peers, by distribution name."""
    from importlib import metadata

    versions = {}
    for dist in ("faiss-cpu", "faiss-gpu", "pykeops", "flash-kmeans", "triton"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
