"""PNG grids of image / ground truth / prediction / pseudo-label / confidence."""
import numpy as np

from ..atomic_file import save_png_atomic
from .config import MAX_CLASSES, comma_items

IGNORED = np.array([90, 90, 90], dtype=np.uint8)
NO_MASK = np.array([60, 60, 130], dtype=np.uint8)  # no truth: a mask-less image's, or augmentation padding
# Background black, then Okabe and Ito's seven colours, which stay apart under the three
# colour-vision deficiencies (blue and magenta of an earlier palette merged under deuteranopia).
CHOSEN_COLOURS = [[0, 0, 0], [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178],
                  [213, 94, 0], [204, 121, 167]]


def lab(rgb):
    """[..., 3] sRGB 0-255 -> CIELAB (D65): distances there follow perceived colour differences."""
    linear = np.asarray(rgb, dtype=np.float64) / 255
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz /= np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _farthest_colours(taken, count, levels=16):
    """``count`` colours, each the candidate (an RGB grid) farthest in CIELAB from all taken
    before it: past eight classes no palette survives colour-vision deficiencies, but each class
    stays as far from the others as it can (golden-angle hues made classes 5 and 15 alike)."""
    axis = np.linspace(0, 255, levels).round()
    candidates = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    candidate_lab = lab(candidates)
    nearest = np.min(np.linalg.norm(candidate_lab[:, None] - lab(taken)[None], axis=-1), axis=1)
    chosen = []
    for _ in range(count):
        best = int(nearest.argmax())
        chosen.append(candidates[best])
        nearest = np.minimum(nearest, np.linalg.norm(candidate_lab - candidate_lab[best], axis=-1))
    return chosen


# A colour for every class a config may name (classes 8 to 12 all took the eighth until session 39).
PALETTE = np.array(CHOSEN_COLOURS + _farthest_colours(CHOSEN_COLOURS + [IGNORED, NO_MASK],
                                                      MAX_CLASSES - len(CHOSEN_COLOURS)), dtype=np.uint8)


def colorize(labels, ignore_index=255):
    """[H, W] labels -> [H, W, 3] uint8; ignored pixels grey, unknown ones (< 0) slate blue."""
    labels = labels.cpu().numpy()
    out = PALETTE[np.clip(labels, 0, len(PALETTE) - 1)]
    out[labels == ignore_index] = IGNORED
    out[labels < 0] = NO_MASK
    return out


def gray(values, low=None, high=None):
    """[H, W] floats -> [H, W, 3] uint8, scaled to [low, high] (default: min..max)."""
    values = values.float().cpu().numpy()
    low = float(np.nanmin(values)) if low is None else low
    high = float(np.nanmax(values)) if high is None else high
    scaled = np.nan_to_num(np.clip((values - low) / max(high - low, 1e-8), 0, 1))  # NaN: black
    return np.repeat(np.rint(255 * scaled).astype(np.uint8)[..., None], 3, axis=2)


def overlay(image, labels, alpha=0.45, ignore_index=255):
    """Image [1, H, W] with class colours blended over foreground pixels and dark diagonal
    stripes over ``ignore_index`` ones (a grey blend would vanish on a grey radiograph)."""
    base = gray(image[0], 0.0, 1.0).astype(np.float32)
    colors = colorize(labels, ignore_index).astype(np.float32)
    values = labels.cpu().numpy()
    foreground = ((values > 0) & (values != ignore_index))[..., None]
    rows, columns = np.indices(values.shape)
    hatched = ((values == ignore_index) & ((rows + columns) // 4 % 2 == 0))[..., None]
    blended = np.where(foreground, (1 - alpha) * base + alpha * colors, base)
    return np.where(hatched, (1 - alpha) * blended, blended).astype(np.uint8)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: its fixed bitmap font
        return ImageFont.load_default()


def _wrapped(text, font, width):
    """`text` in lines no wider than `width` pixels, broken after "=", "_" or "-" where one
    fits, else between characters."""
    lines = []
    while text and font.getlength(text) > width:
        fits = max(1, max((n for n in range(1, len(text)) if font.getlength(text[:n]) <= width), default=1))
        breaks = [n + 1 for n in range(fits) if text[n] in "=_-"]
        cut = breaks[-1] if breaks else fits
        lines.append(text[:cut])
        text = text[cut:]
    return lines + [text]


def _swatch_width(name, font):
    return 13 + int(font.getlength(name)) + 12


def _legend_rows(legend, font, width):
    """The legend's (colour, name) swatches in rows no wider than ``width`` (13 organs overflowed one)."""
    rows, used = [], width
    for color, name in legend:
        if used + _swatch_width(name, font) > width - 2 and (not rows or rows[-1]):
            rows.append([])
            used = 0
        rows[-1].append((color, name))
        used += _swatch_width(name, font)
    return rows


def save_grid(path, panels, titles=(), legend=(), gap=2, min_size=128):
    """Save rows of equally sized [H, W, 3] uint8 panels as one PNG (small panels enlarged),
    under a strip naming the columns (a title's commas start new lines, but for those inside
    [...], which belong to a list value) and above a legend of
    (RGB colour, name) swatches; returns the picture, [H, W, 3] uint8."""
    from PIL import Image, ImageDraw

    scale = max(1, min_size // panels[0][0].shape[0])
    panels = [[panel.repeat(scale, axis=0).repeat(scale, axis=1) for panel in row] for row in panels]
    height, width = panels[0][0].shape[:2]
    columns = max(len(row) for row in panels)
    font = _font()
    title_lines = [[part for line in comma_items(title) for part in _wrapped(line, font, width - 4)]
                   for title in titles]
    line = 14
    top = line * max(map(len, title_lines), default=0) + (2 if titles else 0)
    legend_rows = _legend_rows(legend, font, columns * (width + gap))
    bottom = line * len(legend_rows) + 4 if legend_rows else 0
    canvas = np.full((top + len(panels) * (height + gap) + bottom, columns * (width + gap), 3), 255,
                     dtype=np.uint8)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            y, x = top + r * (height + gap), c * (width + gap)
            canvas[y:y + height, x:x + width] = panel
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, lines in enumerate(title_lines):
        for i, text in enumerate(lines):
            draw.text((c * (width + gap) + 2, 1 + line * i), text, fill="black", font=font)
    for r, row in enumerate(legend_rows):
        x, y = 2, canvas.shape[0] - bottom + 3 + r * line
        for color, name in row:
            draw.rectangle((x, y + 2, x + 9, y + 11), fill=tuple(int(v) for v in color), outline="black")
            draw.text((x + 13, y), name, fill="black", font=font)
            x += _swatch_width(name, font)
    save_png_atomic(picture, path)
    return np.asarray(picture)


def class_legend(class_names, ignored="not kept / ignored"):
    """(colour, name) pairs of `colorize`'s palette for save_grid's legend, background (black) first."""
    return [(PALETTE[c], name) for c, name in enumerate(class_names)] + [(IGNORED, ignored)]


def training_grid(path, images, truth, prediction, pseudo=None, confidence=None, ignore_index=255,
                  class_names=()):
    """One row per image: image, ground truth, prediction[, pseudo-label, confidence]; one
    grey scale for the confidence of every row, so rows compare. Columns are titled, and with
    ``class_names`` a legend names the colours. Returns the picture, as ``save_grid``."""
    rows = []
    if confidence is not None:
        finite = confidence[confidence.isfinite()]
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    for i in range(images.shape[0]):
        row = [gray(images[i, 0], 0.0, 1.0), colorize(truth[i], ignore_index), colorize(prediction[i], ignore_index)]
        if pseudo is not None:
            row += [colorize(pseudo[i], ignore_index), gray(confidence[i], low, high)]
        rows.append(row)
    titles = ["image", "truth" + (" (hidden)" if pseudo is not None else ""), "teacher"]
    if pseudo is not None:
        titles += ["pseudo-label", f"confidence,{low:.2f} black,{high:.2f} white"]
    legend = class_legend(class_names) if class_names else []
    if legend and bool((truth < 0).any()):  # mask-less unlabelled images, or padding a rotation moved in
        legend.append((NO_MASK, "no truth (no mask, or moved in by augmentation)"))
    return save_grid(path, rows, titles, legend)
