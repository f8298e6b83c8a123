"""``python -m refmatch.recipes.report RUN_DIR...``: one Markdown table of finished runs."""
import json
import sys
from pathlib import Path


def table(run_dirs):
    """Markdown rows of method, labelled images, steps, test Dice/IoU/HD95 per run."""
    lines = ["| run | method | labelled | steps | test Dice (lung) | test IoU (lung) | test HD95 (lung) | mean Dice | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in map(Path, run_dirs):
        metrics = json.loads((run / "metrics.json").read_text())
        splits = json.loads((run / "splits.json").read_text())
        test, config = metrics["test"], metrics["config"]
        foreground = [name for name in test["dice"] if name != "background"][0]
        lines.append(f"| {run.name} | {metrics['method']} | {len(splits['labeled'])} | {config['steps']} | "
                     f"{test['dice'][foreground]:.4f} | {test['iou'][foreground]:.4f} | "
                     f"{_number(test['hd95'][foreground], 2)} | {test['mean_dice']:.4f} | "
                     f"{metrics['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def _number(value, digits):
    """metrics.json holds null for an infinite HD95 (a class missing from a prediction)."""
    return "inf" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    print(table(sys.argv[1:]))
