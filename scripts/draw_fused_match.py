"""Draw docs/fused_match.png: how a fused match streams the bank past a block of query rows.

    python scripts/draw_fused_match.py [OUT.png]

A schematic, not a measurement: one program (a CTA on a GPU, a thread on the CPU) holds a block
of query rows, reference tiles stream past it, each tile's scores live only in registers, and a
running best per row is all that leaves. The N x M score matrix is drawn dashed: it never exists.
"""
import sys
from pathlib import Path

try:
    import matplotlib
except ImportError:  # not in the train extra; the test and bench extras have it
    sys.exit("draw_fused_match.py needs matplotlib: pip install matplotlib")

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

QUERY, BANK, TILE, BEST, LINE = "#4c72b0", "#dd8452", "#c44e52", "#55a868", "#444444"
TILES, BLOCKS = 8, 5  # reference tiles across, query row blocks down (the figure's, not the kernel's)


def box(axes, x, y, width, height, colour, alpha=1.0, dashed=False, label=None, text_colour="white"):
    """A rectangle at (x, y) (lower left) with an optional centred label."""
    axes.add_patch(Rectangle((x, y), width, height, facecolor=colour if not dashed else "none", alpha=alpha,
                             edgecolor=LINE if dashed else "white", linestyle="--" if dashed else "-", lw=1.2))
    if label:
        axes.text(x + width / 2, y + height / 2, label, ha="center", va="center", fontsize=9, color=text_colour)


def arrow(axes, start, end):
    """An arrow from ``start`` to ``end``."""
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=LINE, lw=1.4))


def draw(path):
    figure, axes = plt.subplots(figsize=(11, 5.6))
    axes.set_xlim(0, 110)
    axes.set_ylim(0, 58)
    axes.axis("off")
    left, top, cell_w, cell_h = 14, 40, 6, 6  # the score matrix's corner and one tile's size
    # The bank, transposed: D down, M across; one tile streams in.
    for tile in range(TILES):
        box(axes, left + tile * cell_w, top + 2, cell_w, 8, BANK, alpha=0.95 if tile == 3 else 0.35,
            label="tile" if tile == 3 else None)
    axes.text(left + TILES * cell_w / 2, top + 13, "reference bank Rᵀ [D, M], streamed tile by tile "
              "(on GPUs through a multi-stage shared-memory pipeline)", ha="center", fontsize=10)
    # The queries: N down, D across; one block stays on chip.
    for block in range(BLOCKS):
        box(axes, 2, top - (block + 1) * cell_h, 10, cell_h, QUERY, alpha=0.95 if block == 1 else 0.35,
            label="block" if block == 1 else None)
    axes.text(7, top + 1, "query Q\n[N, D]", ha="center", va="bottom", fontsize=9.5)
    axes.text(7, top - BLOCKS * cell_h - 1, "one block\nof rows stays\non chip", ha="center", va="top", fontsize=9)
    # The N x M score matrix: only one tile of it ever exists, in registers.
    box(axes, left, top - BLOCKS * cell_h, TILES * cell_w, BLOCKS * cell_h, "none", dashed=True)
    box(axes, left + 3 * cell_w, top - 2 * cell_h, cell_w, cell_h, TILE, label="S")
    axes.text(left + TILES * cell_w / 2, top - 4 * cell_h, "N × M scores: never written\n(1.1 TB in float32 for "
              "16 images of 128² pixels\nagainst a million references)", ha="center", va="center", fontsize=9.5,
              color=LINE)
    axes.text(left, top - BLOCKS * cell_h - 1, "S = Q_block · R_tileᵀ lives in registers: float32 accumulators\n"
              "(tensor cores on GPUs, vector FMAs on the CPU)", va="top", fontsize=9.5)
    arrow(axes, (left + 3.5 * cell_w, top + 2), (left + 3.5 * cell_w, top - 2 * cell_h + cell_h + 0.3))
    arrow(axes, (12, top - 1.5 * cell_h), (left + 3 * cell_w - 0.3, top - 1.5 * cell_h))
    # The running state per row, the only output.
    state_x = left + TILES * cell_w + 14
    box(axes, state_x, top - 2 * cell_h, 8, cell_h, BEST, label="best")
    arrow(axes, (left + 4 * cell_w + 0.3, top - 1.5 * cell_h), (state_x - 0.3, top - 1.5 * cell_h))
    axes.text(left + TILES * cell_w + 7, top - 1.5 * cell_h + 1.2, "fold the\ntile in", ha="center", va="bottom",
              fontsize=8.5, color=LINE)
    axes.text(state_x + 10, top - 1.5 * cell_h, "per query row, the only output:\n"
              "• k = 1: score and index\n• top-k: a list behind a threshold\n• class-wise: one max per class",
              va="center", fontsize=9.5)
    axes.text(state_x - 2, top - 3 * cell_h - 1,
              "each tile: row max first; locate the argmax\nonly where it beats the running best.\n"
              "Ties go to the lowest index; NaN never wins.\n"
              "GPUs with few query rows: M splits over\nprograms; a small merge keeps the tie rule.",
              va="top", fontsize=9, color=LINE)
    figure.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(figure)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs" / "fused_match.png"
    print(f"wrote {draw(out)}")
