"""Benchmark of ``refmatch.match`` against the GEMM ceiling and the tools users would pick instead.

    refmatch bench                                    # CPU preset: N=8192, M 16K..256K, D 64/128, float32
    refmatch bench --device cuda --dtype bfloat16     # GPU preset: N=262144, M 64K..4M, D 32..256
    refmatch bench --sizes 8192x65536x128 --only torch faiss
    refmatch bench --device cuda --dtype bfloat16 --exclude keops   # a peer that crashes here
    python bench/bench_match.py ...                   # the same, from a checkout

For each size, in one process: the dense ``torch.mm`` of the same N, M, D (the ceiling),
naive ``(q @ r.T).max(1)`` and ``torch.cdist`` + argmin where the N x M matrix fits, every
refmatch backend (k = 1 with dot, l2 and cosine, k = 8 with dot, and the class-wise max over 4
classes), and the installed peers (FAISS flat search, KeOps, flash-kmeans' assignment kernel;
bench_peers.py). It prints a table (median time after a warm-up, TFLOP/s as 2*N*M*D/time, ratio
to the GEMM, top-8's and the class-wise max's time against the backend's k = 1 dot in runs
interleaved with it, peak extra memory, agreement with the float64 oracle) and writes
bench/results/<machine>-<dtype>-<date>.{json,md,png}, -2, -3 ... appended when that name is taken.
"""
import argparse
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from refmatch.bench_files import (INCOMPLETE, fresh_stem, machine, prepared_out_folder, results_stem, run_meta,
                                  write_results)
from refmatch.bench_oracle import Float64Oracle
from refmatch.bench_peers import CLASSES, PROBE_FAILED, all_methods, bench_labels, unmatched_words, wanted
from refmatch.bench_plot import plot
from refmatch.bench_timing import PeakMemory, timed, timed_against
from refmatch.choices import at_least

RESULTS = Path("bench") / "results"
SLOW_SECONDS = 20.0


def run_size(n, m, d, dtype, device, repeat, fits_bytes, only=None, exclude=None, warned=None):
    """Yields one result row per method for one (N, M, D), the GEMM ceilings first (both timed
    before either is yielded: "vs GEMM" is the ratio to the faster). Inputs or an oracle that do
    not fit in memory give one failed row for the size, and the run goes on. ``warned``: the
    run's set of filter warnings already printed (``_warn_unmatched``)."""
    size = {"n": n, "m": m, "d": d, "dtype": str(dtype).replace("torch.", "")}
    try:
        generator = torch.Generator().manual_seed(n * 31 + m * 7 + d)
        query = torch.randn(n, d, generator=generator).to(device=device, dtype=dtype)
        reference = torch.randn(m, d, generator=generator).to(device=device, dtype=dtype)
        considered, warned = [], set() if warned is None else warned
        methods = list(all_methods(query, reference, fits_bytes, only, exclude, considered))
        _warn_unmatched(only, exclude, considered, warned)
        _check_filters([method.name for method in methods if method.metric != "-" and not method.skip], only,
                       exclude, lambda: [method for method in all_methods(query, reference, fits_bytes)
                                         if method.metric != "-"])
        # after the filters' check: a mistyped --only is refused before this, not after the wait
        print(f"# {n}x{m}x{d}: float64 oracle and GEMM ceilings first", file=sys.stderr, flush=True)
        oracle = Float64Oracle(query, reference, bench_labels(m, reference.device), CLASSES)
    except RuntimeError as error:  # torch.OutOfMemoryError; the CPU allocator's is a plain RuntimeError
        if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
            raise  # not memory (an illegal access, say): the run cannot go on
        yield {"method": "inputs and float64 oracle", "metric": "-", "k": "-", **size, "error": _error_text(error)}
        return
    torch.cuda.empty_cache()  # the oracle's cached chunks, for peers outside torch's allocator (CPU: no-op)
    methods = [method for method in methods if wanted(method.name, only, exclude) or method.metric == "-"]
    ceilings = [_measured(method, size, device, repeat, oracle) for method in methods if method.metric == "-"]
    gemm_tflops = max((row["tflops"] for row in ceilings if "tflops" in row), default=None)
    for method in methods:
        row = ceilings.pop(0) if method.metric == "-" else _measured(method, size, device, repeat, oracle)
        if "tflops" in row:
            row["ratio_to_gemm"] = row["tflops"] / gemm_tflops if gemm_tflops else None
        yield row


def _measured(method, size, device, repeat, oracle):
    """One method's result row: timed, its memory and its agreement with ``oracle``; skipped or failed rows
    carry the reason."""
    row = {"method": method.name, "metric": method.metric, "k": method.k, **size}
    skip = method.skip or (method.prepare() if method.prepare else None)
    if skip:
        return {**row, "skipped": skip}
    try:
        begin = time.perf_counter()
        with PeakMemory(device) as memory:  # also the warm-up
            index = method.run()
        first = time.perf_counter() - begin
        times, baseline_times = ([first], []) if first > SLOW_SECONDS else _timed_runs(method, device, repeat)
        if index is None:
            agreed = None
        elif method.classwise:
            agreed = oracle.classwise_agreement(index, method.metric, getattr(torch, size["dtype"]))
        else:
            agreed = oracle.agreement(index, method.metric, method.k)
    except Exception as error:  # a peer that fails here (memory, its own bug): a row, and on
        return {**row, "error": _error_text(error)}
    seconds = statistics.median(times)
    return {**row, "seconds": seconds, "runs": len(times), "min_seconds": min(times), "max_seconds": max(times),
            "tflops": method.flops / seconds / 1e12, "peak_mib": memory.peak_mib, "agreement": agreed,
            **_against_k1(times, baseline_times)}


def _error_text(error):
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def _against_k1(times, baseline_times):
    """The k = 1 runs' median seconds and the median of each run's ratio to its k = 1 run."""
    if not baseline_times:
        return {}
    return {"k1_seconds": statistics.median(baseline_times),
            "ratio_to_k1": statistics.median(t / b for t, b in zip(times, baseline_times))}


def _timed_runs(method, device, repeat):
    """(seconds of each timed run, seconds of the k = 1 run right before each, or []).

    A method slower than SLOW_SECONDS (KeOps on a CPU, its compile included) is
    reported from its warm-up, by the caller. Otherwise a warm run decides: one
    slower than a second is all, else ``repeat`` runs in all. Top-8 and class-wise
    rows (``method.baseline``) run each time right after the backend's k = 1 dot."""
    def measure(count):
        if method.baseline is None:
            return timed(method.run, device, count), []
        return timed_against(method.run, method.baseline, device, count)
    if method.baseline is not None:
        method.baseline()  # its warm-up, in case --only left its own row out
    times, baseline_times = measure(1)
    if times[0] < 1:
        more_times, more_baseline_times = measure(repeat - 1)
        times, baseline_times = times + more_times, baseline_times + more_baseline_times
    return times, baseline_times


def _line(r):
    size = f"| {r['n']} | {r['m']} | {r['d']} | {r['dtype']} | {r['method']} | {r['metric']} | {r['k']} |"
    if "skipped" in r or "error" in r:
        return f"{size} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']} | | | | | |"
    agree = "" if r["agreement"] is None else f"{100 * r['agreement']:.2f} %"
    # with the paired k = 1 runs' own median: the k = 1 row's time comes from other runs
    to_k1 = f"{r['ratio_to_k1']:.2f} of {1e3 * r['k1_seconds']:.1f} ms" if "ratio_to_k1" in r else ""
    to_gemm = "" if r["ratio_to_gemm"] is None else f"{r['ratio_to_gemm']:.2f}"  # no ceiling ran
    return (f"{size} {1e3 * r['seconds']:.1f} | {r['tflops']:.4f} | {to_gemm} | {to_k1} | "
            f"{r['peak_mib']:.0f} | {agree} |")


def markdown(rows):
    header = ["| N | M | D | dtype | method | metric | k | time (ms) | TFLOP/s | vs GEMM | vs k=1 | peak extra MiB "
              "| agreement |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(header + [_line(r) for r in rows])


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


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


positive_int = at_least(1)  # the bench scripts' counts


def add_results_arguments(parser, repeat):
    """The options every benchmark script shares: --repeat (default ``repeat``), --out, --tag."""
    parser.add_argument("--repeat", type=positive_int, default=repeat,
                        help=f"timed runs of each row, after a warm-up (default: {repeat})")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"results folder (default: {RESULTS} under the current folder)")
    parser.add_argument("--tag", type=tag_name,
                        help="added to the file names, so runs of one day stay apart (e.g. sweep)")


def main(argv=None):
    """``refmatch bench``: every size's rows printed and written to the results files as they come."""
    parser = argparse.ArgumentParser(prog="refmatch bench", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="default: float32")
    parser.add_argument("--sizes", nargs="+", type=size_triple, help="NxMxD sizes (default: the device's preset)")
    parser.add_argument("--only", nargs="+", help="time only methods whose name holds one of these words")
    parser.add_argument("--exclude", nargs="+", help="leave out methods whose name holds one of these words")
    parser.add_argument("--fits-gib", type=positive_float, default=8.0,
                        help="largest dense N x M buffer to try, for this shape's GEMM and each plain-PyTorch row; "
                             "the run can hold two such at once (default: 8)")
    add_results_arguments(parser, repeat=3)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but torch {torch.__version__} sees no CUDA device")
    if args.device == "cpu" and args.dtype == "float16":
        print("warning: CPUs have no fast float16 GEMM (the 2048^3 ceiling alone can take a minute), so "
              "the ceiling and the 'vs GEMM' ratios say little; bfloat16 or float32 compare better",
              file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    name, description = machine(args.device)
    meta = run_meta(description, argv, args.repeat)
    prepared_out_folder(parser, args.out)
    print(markdown([]))
    rows, stem, warned = [], None, set()
    stem_wanted = results_stem(args.out, name, args.dtype, args.tag, meta["date"])
    try:
        for n, m, d in args.sizes or [size_triple(size) for size in PRESETS[args.device]]:
            for row in run_size(n, m, d, dtype, args.device, args.repeat, args.fits_gib * 2**30, args.only,
                                args.exclude, warned):
                rows.append(row)
                print(_line(row), flush=True)
                stem = stem or fresh_stem(stem_wanted)  # claimed with the first row
                write_results(stem, meta, rows, results_table(meta, rows))  # after every row
            figure = plot(rows, stem.with_suffix(".png"), f"{meta['device']}; commit {meta['commit']}")
    except BaseException:  # Ctrl-C, SIGTERM or an error: say where the rows so far are
        if stem is not None:
            print(f"\nstopped: the {len(rows)} rows so far are in {stem.resolve()}.json and .md (marked "
                  "incomplete)", file=sys.stderr)
        raise
    meta["complete"] = True
    write_results(stem, meta, rows, results_table(meta, rows))
    print(f"\nwrote {stem.resolve()}.json, .md" + (" and .png" if figure else " (no plot: matplotlib missing)"))
    failed = [row["method"] for row in rows if row["method"].startswith("refmatch ") and
              ("error" in row or row.get("skipped", "").startswith(PROBE_FAILED))]
    if failed:  # a peer's failure is its row; refmatch's own is the run's (a kernel that crashed)
        print(f"{len(failed)} refmatch row(s) failed: {', '.join(dict.fromkeys(failed))} (their errors are in the "
              "results files)", file=sys.stderr)
        raise SystemExit(1)


def refuse_k_above_m(parser, k, sizes):
    """argparse's error (exit status 2) for a k above a size's M: it has fewer matches to return."""
    for n, m, d in sizes:
        if k > m:
            parser.error(f"--k {k} is more than M = {m} references of size {n}x{m}x{d}")


def _warn_unmatched(only, exclude, names, warned):
    """A warning on stderr for filter words no method ``names`` holds, a typo that --exclude
    would otherwise pass in silence (a word may name a peer installed elsewhere); each once a
    run: ``warned`` holds those printed."""
    for flag, words in (("only", only), ("exclude", exclude)):
        unmatched = tuple(unmatched_words(words, names))
        if unmatched and (flag, unmatched) not in warned:
            warned.add((flag, unmatched))
            print(f"warning: --{flag} {' '.join(unmatched)}: no method here holds "
                  f"{'this word' if len(unmatched) == 1 else 'these words'}; methods here: "
                  f"{', '.join(dict.fromkeys(names))}", file=sys.stderr)


def _check_filters(names, only, exclude, every_method):
    """Raise ValueError, before any timing, when --only / --exclude leave none of the runnable
    method ``names`` (the ceilings aside), naming ``every_method()``'s methods: those that run
    here and those that cannot."""
    if not any(wanted(name, only, exclude) for name in names):
        given = " ".join(f"--{flag} {' '.join(words)}" for flag, words in (("only", only), ("exclude", exclude))
                         if words)
        methods = every_method()
        runnable = list(dict.fromkeys(method.name for method in methods if not method.skip))  # metrics share names
        skipped = list(dict.fromkeys(method.name for method in methods if method.skip))
        raise ValueError(f"{given} leaves no method that runs here but the GEMM ceilings; methods here: "
                         f"{', '.join(runnable)}" + (f"; not on this machine: {', '.join(skipped)}" if skipped else ""))


def results_table(meta, rows):
    """The markdown results file: lines naming the run and the command, then the table."""
    stopped = "" if meta["complete"] else f"\n\n{INCOMPLETE}"
    return (f"Device: {meta['device']}; torch {meta['torch']}; peers {meta['peers']}; commit {meta['commit']}; "
            f"{meta['date']}\n\nCommand: `refmatch bench {shlex.join(meta['argv'])}` (up to {meta['repeat']} timed "
            f"runs per method; one where a run takes over a second){stopped}\n\n{markdown(rows)}\n")
