"""The README's five-seed lung tables as one picture: test Dice per method, a dot per seed.

Reads the tables from README.md itself (the rows headed "28 labelled images" and "6 labelled
images"), so the picture shows exactly the published numbers; writes docs/lung_experiment.png.
Usage: python scripts/plot_lung_experiment.py [README] [PNG]   (needs matplotlib: the bench extra)
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seed_tables(readme_text):
    """{labelled images: (seeds, {method: [test Dice per seed]})} from the README's tables whose
    header starts "| N labelled images | seed 0 |"; the method names lose their Markdown."""
    tables = {}
    for count, header, body in re.findall(
            r"^\| (\d+) labelled images (\| seed 0 \|[^\n]*)\n\|[-|]+\n((?:\|[^\n]*\n)+)", readme_text, re.M):
        seeds = [int(seed) for seed in re.findall(r"seed (\d+)", header)]
        rows = {}
        for line in body.splitlines():
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[re.sub(r"[`*]", "", cells[0])] = [float(cell.strip("*")) for cell in cells[1:1 + len(seeds)]]
        tables[int(count)] = seeds, rows
    if not tables:
        raise ValueError("no '| N labelled images | seed 0 | ...' table in the README")
    return tables


def plot(tables, path):
    """One panel per labelled count: a dot per seed and a bar at the mean for each method, the
    fully supervised mean dashed across the panel; a run far below the rest sits at the axis'
    floor as a triangle with its value (and a mean below the floor, dotted there). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(tables, reverse=True)
    everything = [value for _, rows in tables.values() for values in rows.values() for value in values]
    floor, ceiling = _axis_floor(everything), max(everything) + 0.002
    figure, axes = plt.subplots(1, len(counts), figsize=(6.5 * len(counts), 4.2), sharey=True, squeeze=False)
    for axis, count in zip(axes[0], counts):
        seeds, rows = tables[count]
        full = next((name for name in rows if name.startswith("supervised, all")), None)
        methods = [name for name in rows if name != full]
        for position, method in enumerate(methods):
            values = rows[method]
            shown = [value for value in values if value >= floor]
            axis.scatter([position] * len(shown), shown, color=f"C{position}", alpha=0.7, zorder=3)
            for seed, value in zip(seeds, values):
                if value < floor:  # a collapsed run: at the floor, named
                    axis.scatter([position], [floor], color=f"C{position}", marker="v", zorder=3)
                    axis.annotate(f"seed {seed}: {value:.4f}", (position - 0.28, floor), ha="right", va="center",
                                  fontsize=8)
            mean = sum(values) / len(values)
            axis.hlines(max(mean, floor), position - 0.25, position + 0.25, color=f"C{position}", linewidth=2.5,
                        linestyle="-" if mean >= floor else ":")
            axis.annotate(f"mean {mean:.4f}", (position + 0.28, max(mean, floor)), va="center", fontsize=8)
        if full:
            full_mean = sum(rows[full]) / len(rows[full])
            axis.axhline(full_mean, color="black", linestyle="--", linewidth=1,
                         label=f"{full} (mean {full_mean:.4f})")
            axis.legend(loc="upper left", fontsize=8)
        axis.set_xticks(range(len(methods)), [_wrapped(name) for name in methods], fontsize=8)
        axis.set_xlim(-0.5, len(methods) - 0.2)
        axis.set_ylim(floor - 0.0015, ceiling)
        axis.set_title(f"{count} labelled images, {len(seeds)} seeds")
        axis.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test Dice (lung), 128×128")
    figure.suptitle("Shenzhen lung X-rays: a dot per seed, a bar at the mean")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _axis_floor(values, reach=0.05):
    """The y axis' floor: just under the lowest value within `reach` of the median, so that one
    collapsed run (drawn at the floor with its value) does not flatten the others."""
    median = sorted(values)[len(values) // 2]
    return min(value for value in values if value >= median - reach) - 0.002


def _wrapped(name, width=22):
    """Method names on lines of about `width` characters, broken at spaces."""
    lines, line = [], ""
    for word in name.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


if __name__ == "__main__":
    readme = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "lung_experiment.png"
    print(plot(seed_tables(readme.read_text()), target))
