"""The experiments' per-seed tables as pictures: test Dice per method, a dot per seed.

Reads the tables from docs/experiments.md itself, so a picture shows exactly the published
numbers: those whose header's first cell holds WHICH and whose next cells are "seed 0", "seed 1", ...
Usage (matplotlib, from the bench extra):
  python scripts/plot_seed_tables.py "labelled images, instance norm" docs/lung_experiment.png \
      --title "Shenzhen lung X-rays" --ylabel "test Dice (lung), 128×128"
  python scripts/plot_seed_tables.py "labelled images, BatchNorm" docs/lung_experiment_batchnorm.png \
      --title "Shenzhen lung X-rays, BatchNorm" --ylabel "test Dice (lung), 128×128"
  python scripts/plot_seed_tables.py "labelled phantoms" docs/phantom_seeds.png \
      --title "Chest phantoms, the main job's config" --ylabel "test mean Dice (lung, heart, clavicle)"
  python scripts/plot_seed_tables.py "right and left lung" docs/lung_sides.png \
      --ylabel "test mean Dice of the two lungs"
"""
import argparse
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seed_tables(markdown, which):
    """{first header cell: (seeds, {method: [test Dice per seed]})} of the Markdown text's tables
    whose header reads "| ...WHICH... | seed 0 | ..."; the method names lose their Markdown."""
    tables = {}
    for name, header, body in re.findall(
            rf"^\| ([^|\n]*{re.escape(which)}[^|\n]*) (\| seed 0 \|[^\n]*)\n\|[-|]+\n((?:\|[^\n]*\n)+)",
            markdown, re.M):
        seeds = [int(seed) for seed in re.findall(r"seed (\d+)", header)]
        rows = {}
        for line in body.splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[re.sub(r"[`*]", "", cells[0])] = [float(cell.strip("*")) for cell in cells[1:1 + len(seeds)]]
        tables[name] = seeds, rows
    if not tables:
        raise ValueError(f"no '| ...{which}... | seed 0 | ...' table")
    return tables


def plot(tables, path, title="", ylabel="test Dice"):
    """One panel per table (three to a row): a dot per seed and a bar at the mean for each method, the
    fully supervised mean dashed across the panel; a run far below the rest sits at the axis'
    floor as a triangle with its value (and a mean below the floor, dotted there). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [value for _, rows in tables.values() for values in rows.values() for value in values]
    floor = _axis_floor(everything)
    span = max(everything) - floor
    limits = floor - 0.04 * span, max(everything) + 0.18 * span  # room for the legend above
    lines = -(-len(tables) // 3)
    columns = -(-len(tables) // lines)  # balanced: four panels 2 x 2, not 3 + 1 beside two empty slots
    figure, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 4.2 * lines), sharey=True, squeeze=False)
    for axis in axes.flat[len(tables):]:  # a last row with fewer panels
        axis.set_visible(False)
    for axis, (name, (seeds, rows)) in zip(axes.flat, tables.items()):
        full = next((row for row in rows if row.startswith("supervised, all")), None)
        methods = [row for row in rows if row != full]
        for position, method in enumerate(methods):
            values = rows[method]
            shown = [value for value in values if value >= floor]
            axis.scatter([position] * len(shown), shown, color=f"C{position}", alpha=0.7, zorder=3)
            below = [f"seed {seed}: {value:.4f}" for seed, value in zip(seeds, values) if value < floor]
            if below:  # collapsed runs: at the floor, named
                axis.scatter([position], [floor], color=f"C{position}", marker="v", zorder=3)
                axis.annotate("\n".join(below), (position - 0.28, floor), ha="right", va="center", fontsize=9)
            mean = sum(values) / len(values)
            axis.hlines(max(mean, floor), position - 0.25, position + 0.25, color=f"C{position}", linewidth=2.5,
                        linestyle="-" if mean >= floor else ":")
            axis.annotate(f"mean {mean:.4f}", (position + 0.28, max(mean, floor)), va="center", fontsize=9)
        if full:
            full_mean = sum(rows[full]) / len(rows[full])
            axis.axhline(full_mean, color="black", linestyle="--", linewidth=1,
                         label=f"{full} (mean {full_mean:.4f})")
            axis.legend(loc="upper left", fontsize=9)
        axis.set_xticks(range(len(methods)), [textwrap.fill(name, 22) for name in methods], fontsize=9)
        axis.set_xlim(-0.5, len(methods) - 0.2)
        axis.set_ylim(*limits)
        axis.set_title(f"{name}, {len(seeds)} seeds")
        axis.grid(True, axis="y", alpha=0.3)
    for row_axes in axes:
        row_axes[0].set_ylabel(ylabel)
    figure.suptitle(f"{title}: a dot per seed, a bar at the mean" if title else "A dot per seed, a bar at the mean")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _axis_floor(values):
    """The y axis' floor: the lowest value, or, where the values below the widest gap between
    neighbours are farther from the rest than the rest spans (a collapsed run), just under the
    rest, so that such a run (drawn at the floor with its value) does not flatten the others."""
    ordered = sorted(values)
    gap, above = max((ordered[i + 1] - ordered[i], i + 1) for i in range(len(ordered) - 1))
    rest = ordered[above:]
    return rest[0] - (rest[-1] - rest[0]) * 0.05 if gap > rest[-1] - rest[0] else ordered[0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", help="text in the first header cell of the tables to draw, e.g. 'labelled images'")
    parser.add_argument("png", type=Path)
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "experiments.md")
    parser.add_argument("--title", default="")
    parser.add_argument("--ylabel", default="test Dice")
    arguments = parser.parse_args()
    print(plot(seed_tables(arguments.markdown.read_text(), arguments.which), arguments.png, arguments.title,
               arguments.ylabel))
