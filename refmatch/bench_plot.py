"""The benchmark's picture: TFLOP/s per method, one panel per D, the ceilings marked.

``python -m refmatch.bench_plot RESULTS.json ...`` draws each results file's picture again
beside it (after a change to the plot), with its machine and commit."""
import argparse
import json
import re
from pathlib import Path

from .atomic_file import write_atomic

METRIC_MARKERS = {"cosine": "o", "dot": "s", "l2": "^"}  # colour alone names no series to every reader


def plot(rows, path, caption=None):
    """Throughput against M per method (one panel per N and D); a panel with one M
    shows a dot per method on a log axis (bars on a log axis have lengths that mean
    nothing). The square-GEMM ceiling is black and dashed, this shape's GEMM grey
    and dotted; legends sit beside the panels. ``caption`` (the machine and commit)
    heads the figure. Returns ``path``, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = sorted({(r["n"], r["d"]) for r in rows})
    tallest = max(len({_label(r) for r in rows if (r["n"], r["d"]) == panel}) for panel in panels)
    per_entry = 0.22 if all(len({r["m"] for r in rows if (r["n"], r["d"]) == panel}) == 1 for panel in panels) \
        else 0.15  # a dot panel's row a method; otherwise only the legend's entries
    figure, axes = plt.subplots(1, len(panels), figsize=(9 * len(panels), max(4.5, 1.5 + per_entry * tallest)),
                                squeeze=False)
    for axis, (n, d) in zip(axes[0], panels):
        timed = [r for r in rows if (r["n"], r["d"]) == (n, d) and "tflops" in r]
        title = f"{timed[0]['dtype']}, N = {n}, D = {d}" if timed else f"N = {n}, D = {d}"
        if len({r["m"] for r in timed}) == 1:
            _dots(axis, timed, plt.cm.tab20.colors)
            title += f", M = {timed[0]['m']}" if timed else ""
        else:
            _lines(axis, timed, plt.cm.tab20.colors)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    if caption:
        figure.suptitle(caption, fontsize=9)
    figure.tight_layout()
    try:  # atomically, as the results files: a kill mid-write leaves no half picture (and a full disk names it)
        write_atomic(path, lambda file: figure.savefig(file, format="png", dpi=110))
    finally:
        plt.close(figure)
    return path


def _label(row):
    """The method's series name; this shape's GEMM is one series whatever rows of it fit each M."""
    return re.sub(r" \(\d+ rows\)$", " (the rows that fit)", row["method"]) + \
        ("" if row["metric"] == "-" else f" [{row['metric']}]")


def _style(row):
    if not row["method"].startswith("gemm"):  # refmatch's lines solid, the peers' dash-dotted
        return dict(marker=METRIC_MARKERS.get(row["metric"], "D"),
                    linestyle="-" if row["method"].startswith("refmatch") else "-.")
    # markers too: a series of one point draws no line
    return dict(linestyle="--", marker="s", color="black") if "ceiling" in row["method"] else \
        dict(linestyle=":", marker="^", color="grey")


def _lines(axis, timed, colours):
    import matplotlib.ticker

    axis.set_prop_cycle(color=colours)  # more methods than the default 10 colours
    for name in dict.fromkeys(_label(r) for r in timed):
        series = [r for r in timed if _label(r) == name]
        points = sorted((r["m"], r["tflops"]) for r in series)
        axis.plot(*zip(*points), label=name, **_style(series[0]))
    axis.set(xscale="log", yscale="log", xlabel="M (reference rows, log scale)", ylabel="TFLOP/s")
    sizes = sorted({r["m"] for r in timed})
    axis.set_xticks(sizes, [_size_label(m) for m in sizes])  # the measured M: a decade's tick named none
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _value_ticks(axis.yaxis)
    _legend(axis)


def _dots(axis, timed, colours):
    methods = [r for r in timed if not r["method"].startswith("gemm")]
    for position, row in enumerate(methods):
        axis.plot(row["tflops"], position, METRIC_MARKERS.get(row["metric"], "D"),
                  color=colours[position % len(colours)])
        axis.annotate(f"{row['tflops']:.3g}", (row["tflops"], position), xytext=(5, 0), textcoords="offset points",
                      va="center", fontsize=7)
    axis.set_yticks(range(len(methods)), [_label(r) for r in methods], fontsize=7)
    axis.invert_yaxis()
    for row in timed:
        if row["method"].startswith("gemm"):
            style = _style(row)
            axis.axvline(row["tflops"], color=style["color"], linestyle=style["linestyle"],
                         label=f"{_label(row)}: {row['tflops']:.3g}")
    axis.set(xscale="log", xlabel="TFLOP/s (2 N M D / time), log scale")
    _value_ticks(axis.xaxis)
    _legend(axis)


def _value_ticks(value_axis):
    """Labels at 1, 2 and 5 times each power of ten, as plain numbers: with decades only, rates
    that all fall within one decade left the axis without a number."""
    import matplotlib.ticker

    value_axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    value_axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    value_axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _legend(axis):
    if axis.get_legend_handles_labels()[0]:  # a size whose every row failed has nothing to name
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def _size_label(count):
    """65536 -> "64K", 1048576 -> "1M"."""
    for shift, unit in ((20, "M"), (10, "K")):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift}{unit}"
    return str(count)


def replot(results):
    """Draw the picture of a results file (``.json``) again, beside it; returns its path, or None
    without matplotlib."""
    saved = json.loads(Path(results).read_text())
    if not isinstance(saved, dict) or not all(key in saved for key in ("meta", "rows")) or \
            not all(key in row for row in saved["rows"] for key in ("n", "d", "m", "method")):
        raise ValueError(f"{results}: not a results file of refmatch bench (meta and rows of N, M, D and method)")
    meta = saved["meta"]
    return plot(saved["rows"], Path(results).with_suffix(".png"), f"{meta['device']}; commit {meta['commit']}")


def main(argv=None):
    """``python -m refmatch.bench_plot RESULTS.json ...``: each picture drawn again, its path
    printed; a file that is not a bench results file stops it with one error line (status 2)."""
    parser = argparse.ArgumentParser(prog="python -m refmatch.bench_plot",
                                     description="Draw the picture of refmatch bench results files again.")
    parser.add_argument("results", nargs="+", type=Path, help="results .json files (the picture goes beside each)")
    for name in parser.parse_args(argv).results:
        try:
            print(replot(name) or "no plot: matplotlib missing")
        except (OSError, ValueError) as error:  # one line, as the other commands' errors
            parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
