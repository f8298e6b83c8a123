"""Is the C++ fused top-k faster than the torch GEMM walk on this CPU? Each vector width against it.

    python bench/bench_cpu_topk.py                          # the main job's shape and the #7 sizes
    python bench/bench_cpu_topk.py --sizes 65536x22586x24 --metrics cosine l2

Times the torch backend's float32 walk, k = 1 and top-8 (``--k``), without the bfloat16
screen (``screen=False``), three ways, interleaved per repeat so that a drifting host
moves all alike: the GEMM walk (``REFMATCH_CPU_TOPK=0``) and the fused walk at each
vector width this CPU runs
(``REFMATCH_CPU_TOPK=avx512`` / ``avx2``). Reports median milliseconds, the speed-up over
the GEMM walk, GFLOP/s (2 N M D / time) and each walk's agreement with the float64 oracle
(``refmatch.bench_oracle``). Writes bench/results/<machine>-cpu-topk[-<tag>]-<date>.{json,md}
(-2, -3 ... when taken), rewritten after every row; Ctrl-C keeps the rows so far (exit status 130).
"""
import argparse
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

import refmatch
from refmatch.backends import cpu_topk
from refmatch.backends.scoring import METRICS
from refmatch.backends.torch_backend import match_chunked
from refmatch.backends.torch_screening import native_bf16
from refmatch.bench import RESULTS, cpu_model, machine, peer_versions, positive_int, size_triple, tag_name
from refmatch.bench_files import fresh_stem, git_commit, write_results
from refmatch.bench_oracle import Float64Oracle

SIZES = ["32768x8192x24", "8192x16384x64", "8192x65536x128"]  # a main-job class; two of #7's CPU sizes


def run_meta(argv, repeat, timing):
    """What every results file records (bench/README.md), as ``refmatch bench`` records it."""
    return {"device": machine("cpu")[1], "cpu": cpu_model(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "date": date.today().isoformat(), "commit": git_commit(),
            "torch": torch.__version__, "refmatch": refmatch.__version__, "peers": peer_versions(),
            "argv": sys.argv[1:] if argv is None else list(argv), "repeat": repeat, "native_bf16": native_bf16(),
            "isas": cpu_topk.native_isas(), "timing": timing,
            "env": {key: value for key, value in os.environ.items()
                    if key.startswith(("REFMATCH_", "TRITON_", "OMP_"))},
            "complete": False}  # until the last row: the file of a stopped run says so


class ResultsFile:
    """One run's table, printed and rewritten to <stem>.json and .md after every row, as ``refmatch
    bench`` writes them (the stem is claimed with the first row: a run refused before it leaves no
    file). As a context: a block that ends marks the file complete; Ctrl-C prints one line saying
    where the rows so far are and exits with status 130 instead of a traceback."""

    def __init__(self, prog, out, kind, tag, meta, columns):
        self.prog, self.meta, self.rows, self.stem = prog, meta, [], None
        self.stem_wanted = out / "-".join([machine("cpu")[0], kind] + ([tag] if tag else []) + [meta["date"]])
        self.lines = [f"Device: {meta['device']}; torch {meta['torch']}; native bfloat16: {meta['native_bf16']}; "
                      f"fused top-k: {', '.join(meta['isas']) or 'none'}; commit {meta['commit']}; {meta['date']}; "
                      f"{meta['threads']} threads; {meta['timing']}", "",
                      "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def __enter__(self):
        return self

    def print_header(self):
        print("\n".join(self.lines), flush=True)

    def add(self, row, line):
        self.rows.append(row)
        self.lines.append(line)
        print(line, flush=True)
        self.stem = self.stem or fresh_stem(self.stem_wanted)
        write_results(self.stem, self.meta, self.rows, "\n".join(self.lines))

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.meta["complete"] = True
            write_results(self.stem, self.meta, self.rows, "\n".join(self.lines))
            print(f"\nwrote {self.stem.resolve()}.json and .md")
        elif issubclass(kind, KeyboardInterrupt):
            where = (f"the rows so far ({len(self.rows)}) are in {self.stem.resolve()}.json and .md "
                     '("complete": false)' if self.stem else "no row was measured, no file written")
            print(f"{self.prog}: interrupted; {where}", file=sys.stderr)
            raise SystemExit(130) from None


def refuse_k_above_m(parser, k, sizes):
    """argparse's error (exit status 2) for a k above a size's M: it has fewer matches to return."""
    for n, m, d in sizes:
        if k > m:
            parser.error(f"--k {k} is more than M = {m} references of size {n}x{m}x{d}")


def walk(maps, reference, metric, k, setting):
    """One walk, screen off, with REFMATCH_CPU_TOPK=setting: (seconds, index [N, k])."""
    with cpu_topk.forced(setting):
        start = time.perf_counter()
        index = match_chunked(maps, reference, None, k, metric, screen=False)[1]
        return time.perf_counter() - start, index


def measure(query, reference, oracle, metric, k, isas, repeat):
    (n, d), m = query.shape, reference.shape[0]
    maps = query.T[None, :, :, None]
    settings = ["0", *isas]
    times, agreement = {setting: [] for setting in settings}, {}
    for setting in settings:  # warm-up, and the agreement of each walk
        agreement[setting] = oracle.agreement(walk(maps, reference, metric, k, setting)[1], metric, k)
    for _ in range(repeat):
        for setting in settings:
            times[setting].append(walk(maps, reference, metric, k, setting)[0])
    median = {setting: statistics.median(values) for setting, values in times.items()}
    return [{"N": n, "M": m, "D": d, "metric": metric, "k": k, "walk": "torch GEMM walk" if setting == "0" else
             f"fused {cpu_topk.ISA_NAMES[setting]}", "ms": 1e3 * median[setting],
             "speedup": median["0"] / median[setting], "gflops": 2 * n * m * d / median[setting] / 1e9,
             "agreement": agreement[setting]} for setting in settings]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=size_triple, default=[size_triple(s) for s in SIZES],
                        help=f"NxMxD (default: {' '.join(SIZES)})")
    parser.add_argument("--metrics", nargs="+", default=["cosine"], choices=METRICS)
    parser.add_argument("--k", nargs="+", type=positive_int, default=[1, 8],
                        help=f"matches per row, at most {cpu_topk.MAX_K} (the fused walk's limit) and at most M")
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: {RESULTS})")
    parser.add_argument("--tag", type=tag_name, help="added to the file name, so runs of one day stay apart")
    args = parser.parse_args(argv)
    if max(args.k) > cpu_topk.MAX_K:
        parser.error(f"--k: the fused walk takes k <= {cpu_topk.MAX_K}, got {max(args.k)}")
    refuse_k_above_m(parser, max(args.k), args.sizes)
    isas = cpu_topk.native_isas()
    if not isas:
        parser.error(f"the fused top-k does not run here: {cpu_topk.unavailable_reason()}")
    meta = run_meta(argv, args.repeat, f"median of {args.repeat} interleaved runs after a warm-up; screen off")
    args.out.mkdir(parents=True, exist_ok=True)
    columns = ["N", "M", "D", "metric", "k", "walk", "ms", "vs GEMM walk", "GFLOP/s", "agreement"]
    with ResultsFile(parser.prog, args.out, "cpu-topk", args.tag, meta, columns) as results:
        results.print_header()
        generator = torch.Generator().manual_seed(0)
        for n, m, d in args.sizes:
            query, reference = torch.randn(n, d, generator=generator), torch.randn(m, d, generator=generator)
            oracle = Float64Oracle(query, reference, slots=max(args.k))
            for metric, k in ((metric, k) for metric in args.metrics for k in args.k):
                for row in measure(query, reference, oracle, metric, k, isas, args.repeat):
                    results.add(row, f"| {n} | {m} | {d} | {metric} | {k} | {row['walk']} | {row['ms']:.1f} | "
                                     f"{row['speedup']:.2f} | {row['gflops']:.0f} | {100 * row['agreement']:.2f} % |")


if __name__ == "__main__":
    main()
