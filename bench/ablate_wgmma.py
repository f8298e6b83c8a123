"""Where the Hopper wgmma kernel's time goes, by difference, without hardware counters.

    python bench/ablate_wgmma.py [--size 262144x1048576x128] [--variants wgmma-256-tma wgmma-256]

For each variant (``hopper_variants.HOPPER_VARIANTS``) it times the dot k = 1 kernel four
ways with CUDA events (median of --repeat runs after a warm-up): whole; without the
epilogue (fold_tile); without the bank loads (the stages keep what they held, the
barriers still turn); and with neither, which leaves the MMAs, the barriers and the
consumers' turns: this loop's own tensor-core ceiling. Beside them, the dense bf16
``torch.mm`` (8192^3) of the same run. The differences say what each stage adds
(ablated runs return meaningless results; they are timed, never checked). Prints a table
and writes bench/results/<card>-ablation-<date>.{json,md}. Needs an sm_90 GPU and a
build with sm_90a.
"""
import argparse
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from refmatch.backends.cuda_backend import hopper_enabled, kernel_name, launch_match
from refmatch.backends.hopper_variants import HOPPER_VARIANTS, hopper_kernel
from refmatch.backends.scoring import reference_stat
from refmatch.bench import size_triple
from refmatch.bench_files import fresh_stem, git_commit, machine, write_results
from refmatch.bench_timing import timed

# What each run leaves out (HopperAblation bits: 1 the bank loads, 2 the epilogue).
ABLATIONS = {"whole": 0, "no epilogue": 2, "no loads": 1, "MMAs and barriers": 3}
GEMM_SIZE = 8192
HEADER = "| variant | runs | ms (median) | TFLOP/s | vs GEMM | vs whole |\n|---|---|---|---|---|---|"


def gemm_tflops(repeat):
    """The card's dense bf16 rate: a square torch.mm, median of ``repeat`` runs."""
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, a)
    seconds = statistics.median(timed(lambda: torch.mm(a, a), "cuda", repeat))
    return 2 * GEMM_SIZE**3 / seconds / 1e12


def ablation_rows(variant, query, reference, repeat, gemm):
    """One row per ablation of ``variant``: median ms, TFLOP/s, fractions of the GEMM and whole."""
    maps = query.T[None, :, :, None]
    stat = reference_stat(reference, "dot")
    flops = 2 * query.shape[0] * reference.shape[0] * query.shape[1]
    rows = []
    with hopper_kernel(variant):
        runs = kernel_name(maps, reference)
        if runs != variant:
            print(f"skipped {variant}: this size runs {runs}", flush=True)
            return rows
        for name, ablate in ABLATIONS.items():
            def call(ablate=ablate):
                launch_match(maps, reference, stat, "dot", ablate=ablate)
            call()
            torch.cuda.synchronize()
            seconds = statistics.median(timed(call, "cuda", repeat))
            tflops = flops / seconds / 1e12
            rows.append({"variant": variant, "runs": name, "ablate": ablate, "ms": 1e3 * seconds,
                         "tflops": tflops, "vs_gemm": tflops / gemm,
                         "vs_whole": seconds * 1e3 / rows[0]["ms"] if rows else 1.0})
            print(line(rows[-1]), flush=True)
    return rows


def line(row):
    return (f"| {row['variant']} | {row['runs']} | {row['ms']:.1f} | {row['tflops']:.1f} | "
            f"{100 * row['vs_gemm']:.0f} % | {row['vs_whole']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_triple, default="262144x1048576x128", help="NxMxD")
    parser.add_argument("--variants", nargs="*", choices=list(HOPPER_VARIANTS), default=["wgmma-256-tma", "wgmma-256"],
                        help="the wgmma variants to time (none: nothing to do)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row, after one warm-up")
    parser.add_argument("--out", type=Path, default=Path("bench") / "results")
    args = parser.parse_args()
    if not args.variants or not torch.cuda.is_available() or not hopper_enabled(torch.device("cuda")):
        print("skipped: no variant named, or no sm_90 GPU with an sm_90a build")
        return 0
    n, m, d = args.size
    query = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    reference = torch.randn(m, d, device="cuda", dtype=torch.bfloat16)
    gemm = gemm_tflops(args.repeat)
    name, description = machine("cuda")
    meta = {"device": description, "commit": git_commit(), "torch": torch.__version__, "date": date.today().isoformat(),
            "size": [n, m, d], "dtype": "bfloat16", "metric": "dot", "repeat": args.repeat, "gemm_tflops": gemm}
    print(f"{description}, bf16 N={n} M={m} D={d}, dot k=1; dense bf16 GEMM {gemm:.1f} TFLOP/s\n{HEADER}", flush=True)
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    stem = fresh_stem(args.out / f"{name}-ablation-{meta['date']}")
    for variant in args.variants:
        rows += ablation_rows(variant, query, reference, args.repeat, gemm)
        write_results(stem, meta, rows, f"Device: {description}; torch {meta['torch']}; commit "
                      f"{meta['commit']}; bf16 N={n} M={m} D={d}, dot k=1, median of {args.repeat} runs after "
                      f"a warm-up; dense bf16 GEMM {gemm:.1f} TFLOP/s\n\n{HEADER}\n"
                      + "\n".join(line(row) for row in rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
