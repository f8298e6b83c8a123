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
import statistics
import time

import torch

from refmatch.backends import cpu_topk
from refmatch.backends.scoring import METRICS
from refmatch.backends.torch_backend import match_chunked
from refmatch.bench import add_results_arguments, positive_int, refuse_k_above_m, size_triple
from refmatch.bench_files import ResultsFile, machine, prepared_out_folder, results_stem, run_meta
from refmatch.bench_oracle import Float64Oracle

SIZES = ["32768x8192x24", "8192x16384x64", "8192x65536x128"]  # a main-job class; two of #7's CPU sizes


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
    parser = argparse.ArgumentParser(prog="python bench/bench_cpu_topk.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=size_triple, default=[size_triple(s) for s in SIZES],
                        help=f"NxMxD (default: {' '.join(SIZES)})")
    parser.add_argument("--metrics", nargs="+", default=["cosine"], choices=METRICS)
    parser.add_argument("--k", nargs="+", type=positive_int, default=[1, 8],
                        help=f"matches per row, at most {cpu_topk.MAX_K} (the fused walk's limit) and at most M")
    add_results_arguments(parser, repeat=5)
    args = parser.parse_args(argv)
    if max(args.k) > cpu_topk.MAX_K:
        parser.error(f"--k: the fused walk takes k <= {cpu_topk.MAX_K}, got {max(args.k)}")
    refuse_k_above_m(parser, max(args.k), args.sizes)
    isas = cpu_topk.native_isas()
    if not isas:
        parser.error(f"the fused top-k does not run here: {cpu_topk.unavailable_reason()}")
    slug, description = machine("cpu")
    meta = run_meta(description, argv, args.repeat, isas=isas,
                    timing=f"median of {args.repeat} interleaved runs after a warm-up; screen off")
    prepared_out_folder(parser, args.out)
    columns = ["N", "M", "D", "metric", "k", "walk", "ms", "vs GEMM walk", "GFLOP/s", "agreement"]
    stem = results_stem(args.out, slug, "cpu-topk", args.tag, meta["date"])
    with ResultsFile(parser.prog, stem, meta, columns) as results:
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
