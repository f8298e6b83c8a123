"""``refmatch report [--by-seed] RUN_DIR...``: one Markdown table of finished runs,
or with ``--by-seed`` one row per run name across seeds, as docs/experiments.md's five-seed tables."""
import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from .checkpoint import OVERWRITTEN

LEFT_OUT = "\nLeft out, not finished runs of refmatch:"


def table(run_dirs):
    """Markdown rows of method, labelled images, steps, then test Dice / IoU / HD95 of each
    foreground class, mean Dice and minutes per run. The runs must share their classes."""
    runs, left_out = _finished(run_dirs)
    classes = _one_task(runs)
    per_class = [f"test {measure} ({_cell(name)})" for name in classes for measure in ("Dice", "IoU", "HD95")]
    lines = ["| " + " | ".join(["run", "method", "labelled", "steps", *per_class, "mean Dice", "minutes"]) + " |",
             "|---" * (len(per_class) + 6) + "|"]
    names = _distinct_names([run for run, _ in runs])
    splits_of = [_splits(run) for run, _ in runs]
    for (run, metrics), name, splits in zip(runs, names, splits_of):
        test, config = metrics["test"], metrics["config"]
        scores = [" | ".join(_class_scores(test, name)) for name in classes]
        labelled = "–" if splits is None else len(splits["labeled"])
        lines.append(f"| {_cell(name)} | {metrics['method']} | {labelled} | {config['steps']} | "
                     + " | ".join(scores) + f" | {_score(test['mean_dice'])} | {metrics['train_seconds'] / 60:.1f} |")
    return "\n".join(lines + _infinite_notes(runs, classes) + _test_set_notes(runs, names, splits_of) + left_out)


def _splits(run):
    """A run's splits.json, or None where it has none (--by-seed needs metrics.json alone)."""
    path = run / "splits.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _test_set_notes(runs, names, splits_of, per_seed=False):
    """Lines under the table where runs (of one seed, ``per_seed``) were tested on different images
    (another data folder, seed or split): their rows do not compare. ``splits_of``: each run's
    ``_splits``."""
    partitions = {}
    for (_, metrics), name, splits in zip(runs, names, splits_of):
        if splits is None:  # its test images are unknown: compared with none
            continue
        test_set = (str(metrics["config"].get("data")), metrics["config"]["seed"], tuple(splits.get("test", ())))
        partitions.setdefault(test_set[1] if per_seed else None, {}).setdefault(test_set, []).append(name)
    notes = [f"- {'' if seed is None else f'seed {seed}: '}" + "; ".join(
        f"{', '.join(members)} on {data} (seed {run_seed}, {len(test)} test images)"
        for (data, run_seed, test), members in groups.items())
        for seed, groups in partitions.items() if len(groups) > 1]
    return ["\nTest sets differ: rows tested on other images do not compare.", *notes] if notes else []


def _infinite_notes(runs, classes):
    """Lines under the table for each infinite HD95 that metrics.json breaks down (since
    session 39): how many test images made it inf, and the mean over the others."""
    notes = []
    for (run, metrics), name in zip(runs, _distinct_names([run for run, _ in runs])):
        test = metrics["test"]
        for label in classes:
            count = test.get("hd95_inf_images", {}).get(label)
            if test["hd95"][label] is None and count:
                finite = test["hd95_finite"][label]
                others = "no other image" if finite is None else f"{finite:.2f} over the others"
                notes.append(f"- {name}, {label}: HD95 inf in {count} test image(s), {others}")
    if notes:
        notes.insert(0, "\nHD95 inf: a class that only the prediction or only the truth holds in an image.")
    return notes


def seed_table(run_dirs):
    """Markdown rows, one per run folder name (in order of first appearance): test mean Dice per
    seed (the run config's), then over the seeds the mean Dice, the mean of the mean HD95 and the
    range of training minutes. A seed that a row lacks shows "–", and so do that row's means.
    The runs must share their classes."""
    rows, seeds = {}, set()
    runs_in_order, left_out = _finished(run_dirs)
    _one_task(runs_in_order)  # else runs of another task, named alike, would be averaged in
    for run, metrics in runs_in_order:
        seed = metrics["config"]["seed"]
        if seed in rows.setdefault(run.name, {}):
            raise ValueError(f"two runs named {run.name} with seed {seed}: {rows[run.name][seed]['folder']} and {run}")
        rows[run.name][seed] = {**metrics, "folder": run}
        seeds.add(seed)
    seeds = sorted(seeds)
    lines = ["| run | " + " | ".join(f"seed {seed}" for seed in seeds)
             + " | mean test Dice | mean HD95 | minutes per run |", "|---" * (len(seeds) + 4) + "|"]
    asked = Counter(Path(run).name for run in run_dirs)  # a row whose left-out seed took its column too
    for name, by_seed in rows.items():
        runs = [by_seed.get(seed) for seed in seeds]
        dice = [_score(run["test"]["mean_dice"]) if run else "–" for run in runs]
        complete = None not in runs and "–" not in dice and len(by_seed) == asked[name]
        hd95 = [run["test"]["mean_hd95"] for run in by_seed.values()]
        minutes = [run["train_seconds"] / 60 for run in by_seed.values()]
        mean_dice = f"{sum(run['test']['mean_dice'] for run in runs) / len(runs):.4f}" if complete else "–"
        mean_hd95 = ("inf" if None in hd95 else f"{sum(hd95) / len(hd95):.2f}") if complete else "–"
        lines.append(f"| {_cell(name)} | " + " | ".join(dice)
                     + f" | {mean_dice} | {mean_hd95} | {min(minutes):.1f}–{max(minutes):.1f} |")
    return "\n".join(lines + _test_set_notes(runs_in_order, _distinct_names([run for run, _ in runs_in_order]),
                                              [_splits(run) for run, _ in runs_in_order], per_seed=True) + left_out)


def _one_task(runs):
    """The foreground classes that every (run, metrics) of ``runs`` shares; ValueError otherwise."""
    classes = _foreground(runs[0][1])
    for run, metrics in runs:
        if _foreground(metrics) != classes:
            raise ValueError(f"{run} has classes {list(metrics['test']['dice'])}, {runs[0][0]} "
                             f"{['background', *classes]}: report runs of one task together")
    return classes


def _finished(run_dirs):
    """(run, metrics) of the finished runs among ``run_dirs``, and lines naming the others and why
    (one still training left no table of the rest); the first folder's error where none is finished."""
    runs, errors = [], []
    for run in map(Path, run_dirs):
        try:
            runs.append((run, _metrics(run)))
        except (OSError, ValueError) as error:
            errors.append(error)
    if not runs:
        raise errors[0]
    return runs, [LEFT_OUT, *(f"- {error}" for error in errors)] if errors else []


def _metrics(run):
    """A finished run's metrics.json, or a FileNotFoundError saying why there is none."""
    path = run / "metrics.json"
    if not path.is_file():
        why = ("no metrics.json: still training, or stopped (refmatch train --resume)" if run.is_dir()
               else "not a run folder" if run.exists() else "no such folder")
        if (run / OVERWRITTEN / "metrics.json").is_file():
            why = (f"no metrics.json: an --overwrite stopped before its run finished; the earlier run waits in "
                   f"{OVERWRITTEN}/ (refmatch train --resume says how to move it back)")
        raise FileNotFoundError(f"{run}: {why}")
    try:
        metrics = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test"), dict) or \
            not {"method", "config", "train_seconds"} <= metrics.keys() or "dice" not in metrics["test"]:
        raise ValueError(f"{path} is not a refmatch run's (no test scores, config and training time)")
    return metrics


def _foreground(metrics):
    return [name for name in metrics["test"]["dice"] if name != "background"]


def _distinct_names(runs):
    """The runs' folder names, or where two share one (seed0/refmatch, seed1/refmatch) their
    paths below the folder all of them share."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    shared = Path(os.path.commonpath([run.resolve().parent for run in runs]))  # the parents': never a run itself
    return [str(run.resolve().relative_to(shared)) for run in runs]


def _class_scores(test, name):
    """Dice, IoU and HD95 of class ``name``. metrics.json holds null for an undefined Dice and IoU
    (a class in neither the truth nor the prediction: its HD95 is undefined too, "–") and for
    an infinite HD95 (a class in only one of them, "inf")."""
    if test["dice"][name] is None:
        return "–", "–", "–"
    hd95 = test["hd95"][name]
    return _score(test["dice"][name]), _score(test["iou"][name]), "inf" if hd95 is None else f"{hd95:.2f}"


def _score(value):
    """A Dice or IoU, or "–" for null (undefined)."""
    return "–" if value is None else f"{value:.4f}"


def _cell(text):
    """``text`` in a Markdown table cell: a | would start another cell."""
    return str(text).replace("|", "\\|")


def main(argv=None):
    """``refmatch report`` (also ``python -m refmatch.recipes.report``): print the table."""
    parser = argparse.ArgumentParser(prog="refmatch report", description=" ".join(__doc__.replace("``", "").split()))
    parser.add_argument("--by-seed", action="store_true",
                        help="one row per run folder name, a column per seed, and the means over the seeds")
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with metrics.json)")
    arguments = parser.parse_args(argv)
    text = (seed_table if arguments.by_seed else table)(arguments.runs)
    print(text)
    return 1 if LEFT_OUT in text else 0  # a table of some runs: a script should notice


if __name__ == "__main__":
    from refmatch.__main__ import command_line

    sys.exit(command_line(["report", *sys.argv[1:]]))
