"""Benchmark of ``refmatch.match`` against the dense GEMM ceiling, in one process.

    refmatch bench                                    # CPU: N=8192, M=65536, D=128, float32
    refmatch bench --device cuda --dtype bfloat16 --sizes 262144x1048576x128
    python bench/bench_match.py ...                   # the same, from a checkout

For each size it runs, side by side: the dense ``torch.mm`` of the same N, M, D
(the ceiling), naive ``(q @ r.T).max(1)`` where it fits, and every refmatch
backend that can take the call. It prints a table (time, TFLOP/s as 2*N*M*D/time,
ratio to the GEMM, agreement) and writes bench/results/<machine>-<date>.{json,md}.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import torch

import refmatch

RESULTS = Path("bench") / "results"


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
    """Median seconds over ``repeat`` runs after one warm-up."""
    fn()
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


def methods(query, reference, metric, fits_bytes):
    """name -> (callable returning indices or None, skip reason or None, FLOPs it does)."""
    n, m, d = query.shape[0], reference.shape[0], query.shape[1]
    fits = n * m * query.element_size() <= fits_bytes
    # The ceiling is the GEMM rate; when the full N x M product does not fit it is
    # measured on as many query rows as do (same M, D and dtype).
    gemm_rows = max(1, min(n, int(fits_bytes // (m * query.element_size()))))
    out = torch.empty(gemm_rows, m, device=query.device, dtype=query.dtype)

    def gemm():
        torch.mm(query[:gemm_rows], reference.T, out=out)

    def naive():
        return (query @ reference.T).max(1).indices

    name = "gemm torch.mm (ceiling)" if gemm_rows == n else f"gemm torch.mm (ceiling, {gemm_rows} rows)"
    table = {name: (gemm, None, 2 * gemm_rows * m * d),
             "naive (q @ r.T).max(1)": (naive, None if fits else "the N x M score matrix does not fit", 2 * n * m * d)}
    for status in refmatch.backends():
        def run(backend=status.name):
            return refmatch.match(query, reference, metric=metric, backend=backend).index
        try:
            refmatch.match(query[:1], reference[:1], metric=metric, backend=status.name)
            table[f"refmatch {status.name}"] = (run, None, 2 * n * m * d)
        except ValueError as error:
            table[f"refmatch {status.name}"] = (run, str(error).split(": ", 1)[-1], 2 * n * m * d)
    return table


def agreement(index, query, reference, expected_score):
    """Fraction of rows whose chosen reference scores (dot) within 1e-3 of the torch backend's best."""
    if index is None:
        return None
    picked = (query.float() * reference.float()[index.clamp(min=0)]).sum(1)  # dot metric
    return ((picked - expected_score).abs() <= 1e-3 * expected_score.abs().clamp(min=1)).float().mean().item()


def run_size(n, m, d, dtype, device, repeat, fits_bytes):
    query = torch.randn(n, d, device=device).to(dtype)
    reference = torch.randn(m, d, device=device).to(dtype)
    expected = refmatch.match(query, reference, metric="dot", backend="torch").score
    rows = []
    for name, (fn, skip, flops) in methods(query, reference, "dot", fits_bytes).items():
        if skip:
            rows.append({"method": name, "skipped": skip})
            continue
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(fn, device, repeat)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        rows.append({"method": name, "seconds": seconds, "tflops": flops / seconds / 1e12,
                     "peak_mib": peak, "agreement": agreement(fn(), query, reference, expected)})
    gemm = next((r["tflops"] for r in rows if r["method"].startswith("gemm") and "tflops" in r), None)
    for row in rows:
        row.update(n=n, m=m, d=d, dtype=str(dtype).replace("torch.", ""))
        if gemm and "tflops" in row:
            row["ratio_to_gemm"] = row["tflops"] / gemm
    return rows


def markdown(rows):
    lines = ["| N | M | D | dtype | method | time (ms) | TFLOP/s | vs GEMM | agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n']} | {r['m']} | {r['d']} | {r['dtype']} | {r['method']} | skipped: {r['skipped']} | | | |")
            continue
        agree = "" if r["agreement"] is None else f"{100 * r['agreement']:.2f} %"
        lines.append(f"| {r['n']} | {r['m']} | {r['d']} | {r['dtype']} | {r['method']} | {1e3 * r['seconds']:.1f} | "
                     f"{r['tflops']:.4f} | {r.get('ratio_to_gemm', float('nan')):.2f} | {agree} |")
    return "\n".join(lines)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="refmatch bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--sizes", nargs="+", default=["8192x65536x128"], help="NxMxD")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fits-gib", type=float, default=8.0, help="largest dense N x M buffer to try")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = []
    for size in args.sizes:
        n, m, d = (int(v) for v in size.lower().split("x"))
        rows += run_size(n, m, d, dtype, args.device, args.repeat, args.fits_gib * 2**30)
    table = markdown(rows)
    print(table)
    name, description = machine(args.device)
    meta = {"device": description, "cpu": cpu_model(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "date": date.today().isoformat(), "commit": git_commit(),
            "torch": torch.__version__, "refmatch": refmatch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{name}-{args.dtype}-{meta['date']}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text(f"Device: {description}, torch {meta['torch']}, "
                                       f"commit {meta['commit']}, {meta['date']}\n\n{table}\n")
    print(f"\nwrote {stem}.json and .md")
