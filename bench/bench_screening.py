"""When does the CPU's bfloat16 screen pay? The fused walk with and without it, on several feature sets.

    python bench/bench_screening.py                       # random and clustered synthetic features
    python bench/bench_screening.py --run runs/lung_seed0/refmatch_5pct \\
        --data ../shared/datasets/nlm-cxr-lung-512        # plus a trained teacher's features of real images
    python bench/bench_screening.py --run runs/phantom    # a phantom run: its phantoms are generated again

Every path should return the same matches (the screen: the fused walk's, to the bit); the
table gives the time of each for k = 1 and top-8 (``--k``): the torch GEMM walk, the C++
fused walk and the screened fused walk; "speedup" is the screen against the fused walk.
Also the share of (row, vector of references) pairs the screen scored in float32 as well
(100 %: every row tile walked), and the agreement of the torch walk and the screen with the
benchmark's float64 oracle (``refmatch.bench_oracle``: every slot, best first). Needs the
screen (refmatch._C on an AVX-512 CPU with AVX512_BF16). Writes
bench/results/<machine>-screening[-<tag>]-<date>.{json,md} (-2, -3 ... when taken), rewritten
after every row; Ctrl-C keeps the rows so far (exit status 130).
"""
import argparse
import itertools
import statistics
from pathlib import Path

import torch

from refmatch.__main__ import one_line  # a DataLoader worker's error: its last line
from refmatch.backends import cpu_topk
from refmatch.backends.scoring import METRICS
from refmatch.backends.torch_backend import fused_walk, match_chunked
from refmatch.backends.torch_screening import MAX_K, screen_window
from refmatch.bench import add_results_arguments, positive_int, refuse_k_above_m, size_triple
from refmatch.bench_files import ResultsFile, machine, prepared_out_folder, results_stem, run_meta
from refmatch.bench_oracle import Float64Oracle
from refmatch.bench_timing import timed


def synthetic(name, n, m, d, generator):
    """[N, D] queries and [M, D] references: Gaussian, or 4 clusters with per-dimension noise."""
    if name == "random":
        return torch.randn(n, d, generator=generator), torch.randn(m, d, generator=generator)
    noise = float(name.split("=")[1])
    centers = torch.randn(4, d, generator=generator)
    pick = lambda count: centers[torch.randint(0, 4, (count,), generator=generator)]  # noqa: E731
    return (pick(n) + noise * torch.randn(n, d, generator=generator),
            pick(m) + noise * torch.randn(m, d, generator=generator))


def teacher_features(run_dir, data, num_images):
    """Tap features [N, D] of a training run's first ``num_images`` unlabelled images and its reference
    bank [M, D]. ``data`` (default: the run's own, a folder or "phantom") is loaded as training loads
    it: a phantom run's phantoms are generated again from its config."""
    from refmatch.data.splits import load_splits
    from refmatch.recipes.cli import checkpoint_teacher
    from refmatch.recipes.data_setup import load_run_split
    from refmatch.recipes.methods import ReferencePseudoLabels

    model, config, classes = checkpoint_teacher(run_dir / "best.pt", "cpu")
    splits = load_splits(run_dir / "splits.json")
    splits["unlabeled"] = splits["unlabeled"][:num_images]
    if not splits["unlabeled"]:  # a fully supervised run (labeled_fraction=1.0): the model would fail on no images
        raise ValueError("the run has no unlabelled images to take features of: take a run that has some")
    labeled, unlabeled = (load_run_split(config, splits, key, data) for key in ("labeled", "unlabeled"))
    source = ReferencePseudoLabels(model, config, classes, "cpu")
    source.refresh(labeled.images, labeled.masks, config.batch_size)
    with torch.no_grad():
        model(unlabeled.images)
        features = source.tap.features().float()
    rows = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    bank = source.bank
    return rows, torch.cat([bank._class_rows(cls) for cls in range(bank.num_classes)]).float()


def median_of(fn, repeat):
    """(median of ``repeat`` timed calls after a warm-up, in seconds; the warm-up's result)."""
    result = fn()
    return statistics.median(timed(fn, "cpu", repeat)), result


def float32_share(query, reference, metric, k):
    """The share of (row, vector of references) pairs the screened fused walk scores in float32."""
    vectors, float32 = fused_walk(query, reference, None, k, metric, screen_window(query, reference, None, metric))[2]
    return float32 / vectors


def measure(name, query, reference, oracle, metric, k, repeat):
    """The torch GEMM walk, the C++ fused walk and the screened fused walk."""
    maps = query.T[None, :, :, None]
    with cpu_topk.forced("0"):  # the torch GEMM walk even where _C has the fused one
        walk, (_, walk_index) = median_of(lambda: match_chunked(maps, reference, None, k, metric, screen=False), repeat)
    fused = median_of(lambda: match_chunked(maps, reference, None, k, metric, screen=False), repeat)[0]
    screen, (_, screen_index) = median_of(lambda: match_chunked(maps, reference, None, k, metric, screen=True), repeat)
    return {"features": name, "N": query.shape[0], "M": reference.shape[0], "D": query.shape[1], "metric": metric,
            "k": k, "walk_ms": 1e3 * walk, "fused_ms": 1e3 * fused, "screen_ms": 1e3 * screen,
            "speedup": fused / screen, "float32_share": float32_share(query, reference, metric, k),
            "walk_agreement": oracle.agreement(walk_index, metric, k),
            "screen_agreement": oracle.agreement(screen_index, metric, k)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python bench/bench_screening.py", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=size_triple, default="8192x65536x128", help="NxMxD of the synthetic sets")
    parser.add_argument("--metrics", nargs="+", default=["cosine", "l2"], choices=METRICS)
    parser.add_argument("--k", nargs="+", type=positive_int, default=[1, 8],
                        help=f"matches per row, at most {MAX_K} (the screen's limit) and at most M")
    parser.add_argument("--run", type=Path, help="training run folder with best.pt and splits.json")
    parser.add_argument("--data", help="the dataset folder that run trained on, or phantom (default: the run's own)")
    parser.add_argument("--images", type=positive_int, default=16, help="unlabelled images to take features of")
    add_results_arguments(parser, repeat=3)
    args = parser.parse_args(argv)
    if max(args.k) > MAX_K:
        parser.error(f"--k: the screen takes k <= {MAX_K}, got {max(args.k)}")
    if not cpu_topk.screen_available():
        parser.error("no bfloat16 screen here: it needs refmatch._C's fused walk on an AVX-512 CPU with AVX512_BF16")
    refuse_k_above_m(parser, max(args.k), [args.size])
    slug, description = machine("cpu")
    meta = run_meta(description, argv, args.repeat, isas=cpu_topk.native_isas(),
                    timing=f"median of {args.repeat} runs after a warm-up")
    prepared_out_folder(parser, args.out)
    columns = ["features", "N", "M", "D", "metric", "k", "walk ms", "fused ms", "screen ms", "speedup",
               "float32 share", "walk agrees", "screen agrees"]
    stem = results_stem(args.out, slug, "screening", args.tag, meta["date"])
    with ResultsFile(parser.prog, stem, meta, columns) as results:
        teacher_set = [(f"teacher features ({args.run})", *teacher(parser, args))] if args.run else []
        results.print_header()  # after the run is loaded: a bad --run is refused before the table
        generator, (n, m, d) = torch.Generator().manual_seed(0), args.size
        names = ("random", "clusters noise=1", "clusters noise=0.3", "clusters noise=0.1")
        synthetic_sets = ((name, *synthetic(name, n, m, d, generator)) for name in names)  # one at a time
        for label, query, reference in itertools.chain(synthetic_sets, teacher_set):
            oracle = Float64Oracle(query, reference, slots=max(args.k))
            for metric, k in ((metric, k) for metric in args.metrics for k in args.k):
                row = measure(label, query, reference, oracle, metric, k, args.repeat)
                results.add(row, f"| {label} | {row['N']} | {row['M']} | {row['D']} | {metric} | {k} | "
                                 f"{row['walk_ms']:.1f} | {row['fused_ms']:.1f} | {row['screen_ms']:.1f} | "
                                 f"{row['speedup']:.2f} | {100 * row['float32_share']:.1f} % | "
                                 f"{100 * row['walk_agreement']:.2f} % | "
                                 f"{100 * row['screen_agreement']:.2f} % |")


def teacher(parser, args):
    """``teacher_features`` of --run; a run, data or k it cannot take is argparse's error (exit status 2)."""
    try:
        query, reference = teacher_features(args.run, args.data, args.images)
    except (OSError, ValueError) as error:  # a missing or foreign file, a folder that does not hold the run's images
        parser.error(f"--run {args.run}: {' '.join(one_line(error).split())}")
    if max(args.k) > reference.shape[0]:
        parser.error(f"--k {max(args.k)} is more than the {reference.shape[0]} references of --run {args.run}'s bank")
    return query, reference


if __name__ == "__main__":
    main()
