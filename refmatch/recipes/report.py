"""``refmatch report [--by-seed] RUN_DIR...``: one Markdown table of finished runs,
or with ``--by-seed`` one row per run name across seeds, as docs/experiments.md's five-seed tables."""
import argparse
import json
import sys
from pathlib import Path


def table(run_dirs):
    """Markdown rows of method, labelled images, steps, then test Dice / IoU / HD95 of each
    foreground class, mean Dice and minutes per run. The runs must share their classes."""
    runs = [(run, _metrics(run)) for run in map(Path, run_dirs)]
    classes = _foreground(runs[0][1])
    for run, metrics in runs:
        if _foreground(metrics) != classes:
            raise ValueError(f"{run} has classes {list(metrics['test']['dice'])}, {runs[0][0]} "
                             f"{['background', *classes]}: report runs of one task together")
    per_class = [f"test {measure} ({name})" for name in classes for measure in ("Dice", "IoU", "HD95")]
    lines = ["| " + " | ".join(["run", "method", "labelled", "steps", *per_class, "mean Dice", "minutes"]) + " |",
             "|---" * (len(per_class) + 6) + "|"]
    for run, metrics in runs:
        splits = json.loads((run / "splits.json").read_text())
        test, config = metrics["test"], metrics["config"]
        scores = [f"{test['dice'][name]:.4f} | {test['iou'][name]:.4f} | {_number(test['hd95'][name], 2)}"
                  for name in classes]
        lines.append(f"| {run.name} | {metrics['method']} | {len(splits['labeled'])} | {config['steps']} | "
                     + " | ".join(scores) + f" | {test['mean_dice']:.4f} | {metrics['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def seed_table(run_dirs):
    """Markdown rows, one per run folder name (in order of first appearance): test mean Dice per
    seed (the run config's), then over the seeds the mean Dice, the mean of the mean HD95 and the
    range of training minutes. A seed that a row lacks shows "–", and so do that row's means."""
    rows, seeds = {}, set()
    for run in map(Path, run_dirs):
        metrics = _metrics(run)
        seed = metrics["config"]["seed"]
        if seed in rows.setdefault(run.name, {}):
            raise ValueError(f"two runs named {run.name} with seed {seed}: {rows[run.name][seed]['folder']} and {run}")
        rows[run.name][seed] = {**metrics, "folder": run}
        seeds.add(seed)
    seeds = sorted(seeds)
    lines = ["| run | " + " | ".join(f"seed {seed}" for seed in seeds)
             + " | mean test Dice | mean HD95 | minutes per run |", "|---" * (len(seeds) + 4) + "|"]
    for name, by_seed in rows.items():
        runs = [by_seed.get(seed) for seed in seeds]
        dice = [f"{run['test']['mean_dice']:.4f}" if run else "–" for run in runs]
        complete = None not in runs
        hd95 = [run["test"]["mean_hd95"] for run in by_seed.values()]
        minutes = [run["train_seconds"] / 60 for run in by_seed.values()]
        mean_dice = f"{sum(run['test']['mean_dice'] for run in runs) / len(runs):.4f}" if complete else "–"
        mean_hd95 = ("inf" if None in hd95 else f"{sum(hd95) / len(hd95):.2f}") if complete else "–"
        lines.append(f"| {name} | " + " | ".join(dice)
                     + f" | {mean_dice} | {mean_hd95} | {min(minutes):.1f}–{max(minutes):.1f} |")
    return "\n".join(lines)


def _metrics(run):
    """A finished run's metrics.json, or a FileNotFoundError saying why there is none."""
    path = run / "metrics.json"
    if not path.is_file():
        why = ("no metrics.json: still training, or stopped (refmatch train --resume)" if run.is_dir()
               else "not a run folder")
        raise FileNotFoundError(f"{run}: {why}")
    return json.loads(path.read_text())


def _foreground(metrics):
    return [name for name in metrics["test"]["dice"] if name != "background"]


def _number(value, digits):
    """metrics.json holds null for an infinite HD95 (a class missing from a prediction)."""
    return "inf" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    """``refmatch report`` (also ``python -m refmatch.recipes.report``): print the table."""
    parser = argparse.ArgumentParser(prog="refmatch report", description=" ".join(__doc__.split()))
    parser.add_argument("--by-seed", action="store_true",
                        help="one row per run folder name, a column per seed, and the means over the seeds")
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with metrics.json)")
    arguments = parser.parse_args(argv)
    print((seed_table if arguments.by_seed else table)(arguments.runs))


if __name__ == "__main__":
    from refmatch.__main__ import command_line

    sys.exit(command_line(["report", *sys.argv[1:]]))
