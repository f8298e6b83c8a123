"""Tile-shape sweep of the Triton ``match`` kernel on a GPU (input to ``launch_config``).

    python bench/tune_triton.py --sizes 262144x1048576x128 262144x1048576x64

For each size and reduction (k = 1 with dot, cosine and l2, k = 1 on top-8's tile, top-8,
class-wise C = 4: the per-class kernel that graph capture runs; other calls take the k = 1
rows' kernel) it
times every tile candidate (BLOCK_N, BLOCK_M, num_warps, num_stages, query resident
or streamed, register cap) with CUDA events (median of RUNS after a warm-up), checks the
result against the default tiles, and prints a table of TFLOP/s (2*N*M*D / time)
with the registers and spilled bytes per thread of the compiled kernel. A candidate
that does not compile or fit is listed with the error. Writes
bench/results/<card>-triton-tiles-<date>.{json,md} (-2, -3 ... when taken).
"""
import argparse
import os
import statistics
import sys
from datetime import date
from pathlib import Path

import torch
import triton

from refmatch.bench import size_triple
from refmatch.bench_files import fresh_stem, git_commit, machine, write_results
from refmatch.bench_timing import timed
from refmatch.kernels.match_aot import compile_variant
from refmatch.kernels.match_launch import classwise_max, match_topk
from refmatch.kernels.match_tiles import launch_config, launch_tile

RUNS = 5  # timed runs per candidate, after the run that compiles and checks it (its warm-up)

# Overrides of launch_config per candidate; the first of each list is the launcher's default
# (on sm_90 the dot argmax's is TWO_PROGRAMS_PER_SM unless its compile spills; that row shows the
# capped shape either way, with its spills, and (128, 128, 8, 3) is listed beside it).
# query_resident=False streams the query through shared memory in 64-channel chunks;
# maxnreg=128 with 2 stages lets two 8-warp programs share an SM (65536 registers,
# about 2 x 98 KB of shared memory at D=128).
_TILE_NAMES = ("block_n", "block_m", "num_warps", "num_stages", "query_resident", "maxnreg")
TWO_PER_SM = (128, 128, 8, 2, None, 128)
# One-warpgroup programs (64 rows, 4 warps) fit 3-5 to an SM at D = 64 (ahead-of-time compile,
# triton 3.9), so one program's epilogue can overlap another's MMA; at D = 128 the 64 x 128 shape spills.
# Top-k and class-wise come first (their loops are software-pipelined since session 14, which timed
# these on an H200): one stage (s1) does not pipeline, as they ran before; s2 fits four 64 x 64 programs to an SM at
# D = 128, s3 three; 128 x 128 is the k = 1 default's shape, uncapped and capped (TWO_PER_SM: its
# compile under triton 3.6 keeps 64 bytes of stack for top-8, 8 for class-wise; not yet timed, so
# it comes right after the default: a sweep cut short still times it).
PIPELINE_CANDIDATES = [(), TWO_PER_SM, (64, 64, 4, 1), (64, 64, 4, 2), (128, 128, 8, 3), (128, 128, 8, 2)]
CANDIDATES = {
    "top-8": PIPELINE_CANDIDATES,
    "classwise-4": PIPELINE_CANDIDATES,
    "argmax": [(), (128, 128, 8, 3), (128, 128, 8, 2, None, 168), (128, 64, 4, 4), (128, 64, 4, 2),
               (256, 128, 8, 3), (256, 64, 8, 3), (128, 128, 8, 3, False), (64, 128, 4, 3), (64, 64, 4, 4)],
    # k = 1 on top-8's default tile (64 x 64, 4 warps, 3 stages; launch_config): top-8's time over
    # this row is its epilogue's, over the k = 1 default's (first row) also the smaller tile's.
    "argmax-topk-tile": [(), (64, 64, 4, 3)],
    "argmax-cosine": [(), TWO_PER_SM],
    "argmax-l2": [(), TWO_PER_SM, (128, 64, 4, 4), (64, 128, 4, 3), (64, 64, 4, 4)],
}
# Each sweep's kernel: (reduction, k or number of classes, metric).
KERNELS = {"argmax": ("argmax", 1, "dot"), "argmax-topk-tile": ("argmax", 1, "dot"),
           "argmax-cosine": ("argmax", 1, "cosine"), "argmax-l2": ("argmax", 1, "l2"),
           "top-8": ("topk", 8, "dot"), "classwise-4": ("classwise", 4, "dot")}


def run(sweep_name, query, reference, stats, labels, tile):
    """(scores, indices or None) of one sweep's kernel with the given tile overrides."""
    maps = query.T[None, :, :, None]
    reduction, slots, metric = KERNELS[sweep_name]
    if reduction == "classwise":
        return classwise_max(maps, reference, stats[metric], labels, metric, slots, **tile), None
    return match_topk(maps, reference, stats[metric], metric, slots, **tile)


def sweep(n, m, d, dtype, reductions):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(n, d, generator=generator).to("cuda", dtype)
    reference = torch.randn(m, d, generator=generator).to("cuda", dtype)
    stats = {"dot": torch.empty(0, device="cuda"), "cosine": reference.float().norm(dim=1).reciprocal(),
             "l2": reference.float().square().sum(1)}
    labels = (torch.arange(m, device="cuda") * 4) // m
    maps = query.T[None, :, :, None]
    flops = 2.0 * n * m * d
    for reduction in reductions:
        candidates = CANDIDATES[reduction]
        kernel_reduction, slots, metric = KERNELS[reduction]
        expected = None
        for candidate in candidates:
            tile = launch_tile(maps, metric, kernel_reduction, dict(zip(_TILE_NAMES, candidate)))  # () as launched
            config = launch_config(d, slots, **tile)
            shape = (f"{config['BLOCK_N']}x{config['BLOCK_M']} w{config['num_warps']} s{config['num_stages']}"
                     + ("" if config["QUERY_RESIDENT"] else " streamed")
                     + (f" maxnreg {config['maxnreg']}" if "maxnreg" in config else ""))
            row = {"n": n, "m": m, "d": d, "dtype": str(dtype).replace("torch.", ""), "reduction": reduction,
                   "tiles": shape + ("" if candidate else " (default)")}
            try:
                kernel = compile_variant(torch.cuda.get_device_capability()[0] * 10, row["dtype"], d, metric,
                                         kernel_reduction, slots, **tile)
                kernel._init_handles()  # loads it: registers and spills are known from here
                row.update(registers=kernel.n_regs, spilled_bytes=kernel.n_spills)
                score, _ = run(reduction, query, reference, stats, labels, tile)
                expected = score if expected is None else expected
                row["agrees"] = bool(torch.allclose(score, expected, rtol=1e-3, atol=1e-3, equal_nan=True))
                times = timed(lambda: run(reduction, query, reference, stats, labels, tile), "cuda", RUNS)
                seconds = statistics.median(times)
                row.update(ms=1e3 * seconds, runs=len(times), tflops=flops / seconds / 1e12)
            except Exception as error:  # a tile that does not compile or fit: record why
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(line(row), flush=True)
            yield row


def line(row):
    head = f"| {row['n']} | {row['m']} | {row['d']} | {row['dtype']} | {row['reduction']} | {row['tiles']} |"
    if "error" in row:
        return f"{head} {row['error']} | | | | | |"
    return (f"{head} {row['ms']:.1f} | {row['runs']} | {row['tflops']:.1f} | {row['registers']} | "
            f"{row['spilled_bytes']} | {'yes' if row['agrees'] else 'NO'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--sizes", nargs="+", type=size_triple, default=[size_triple("262144x1048576x128")])
    parser.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    parser.add_argument("--out", type=Path, default=Path("bench") / "results")
    parser.add_argument("--reductions", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                        help="sweeps to run, in this order (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the tile sweep compiles and times Triton kernels on a CUDA device; torch sees none")
    header = ("| N | M | D | dtype | reduction | tiles | ms (median) | runs | TFLOP/s | registers | spilled bytes "
              "| agrees with default |\n" + "|---" * 12 + "|")
    print(header)
    rows = []
    name, description = machine("cuda")
    meta = {"device": description, "commit": git_commit(), "torch": torch.__version__,
            "triton": triton.__version__, "date": date.today().isoformat(), "argv": sys.argv[1:],
            "runs_per_candidate": RUNS, "environment": {key: value for key, value in os.environ.items()
                                                        if key.startswith(("TRITON_", "REFMATCH_"))}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = None
    for n, m, d in args.sizes:
        for row in sweep(n, m, d, getattr(torch, args.dtype), args.reductions):
            rows.append(row)
            stem = stem or fresh_stem(args.out / f"{name}-triton-tiles-{meta['date']}")  # with the first row
            write_results(stem, meta, rows, f"Device: {description}; torch {meta['torch']}; triton "
                          f"{meta['triton']}; commit {meta['commit']}; median of {RUNS} timed runs after one "
                          f"warm-up\n\n{header}\n" + "\n".join(line(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
