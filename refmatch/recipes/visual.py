"""PNG grids of image / ground truth / prediction / pseudo-label / confidence."""
import numpy as np

PALETTE = np.array([[0, 0, 0], [230, 80, 60], [70, 160, 230], [250, 200, 40], [120, 200, 90],
                    [200, 110, 220], [240, 240, 240], [140, 90, 40]], dtype=np.uint8)
IGNORED = np.array([90, 90, 90], dtype=np.uint8)


def colorize(labels, ignore_index=255):
    """[H, W] labels -> [H, W, 3] uint8; ignored or unknown pixels grey."""
    labels = labels.cpu().numpy()
    out = PALETTE[np.clip(labels, 0, len(PALETTE) - 1)]
    out[(labels == ignore_index) | (labels < 0)] = IGNORED
    return out


def gray(values, low=None, high=None):
    """[H, W] floats -> [H, W, 3] uint8, scaled to [low, high] (default: min..max)."""
    values = values.float().cpu().numpy()
    low = float(np.nanmin(values)) if low is None else low
    high = float(np.nanmax(values)) if high is None else high
    scaled = np.nan_to_num(np.clip((values - low) / max(high - low, 1e-8), 0, 1))  # NaN: black
    return np.repeat((255 * scaled).astype(np.uint8)[..., None], 3, axis=2)


def overlay(image, labels, alpha=0.45, ignore_index=255):
    """Image [1, H, W] with class colours blended over foreground pixels."""
    base = gray(image[0], 0.0, 1.0).astype(np.float32)
    colors = colorize(labels, ignore_index).astype(np.float32)
    foreground = ((labels.cpu().numpy() > 0) & (labels.cpu().numpy() != ignore_index))[..., None]
    return np.where(foreground, (1 - alpha) * base + alpha * colors, base).astype(np.uint8)


def save_grid(path, panels, gap=2, min_size=128):
    """Save rows of equally sized [H, W, 3] uint8 panels as one PNG (small panels enlarged)."""
    from PIL import Image

    scale = max(1, min_size // panels[0][0].shape[0])
    panels = [[panel.repeat(scale, axis=0).repeat(scale, axis=1) for panel in row] for row in panels]
    height, width = panels[0][0].shape[:2]
    columns = max(len(row) for row in panels)
    canvas = np.full((len(panels) * (height + gap), columns * (width + gap), 3), 255, dtype=np.uint8)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            canvas[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = panel
    Image.fromarray(canvas).save(path)


def training_grid(path, images, truth, prediction, pseudo=None, confidence=None, ignore_index=255):
    """One row per image: image, ground truth, prediction[, pseudo-label, confidence]; one
    grey scale for the confidence of every row, so rows compare."""
    rows = []
    if confidence is not None:
        finite = confidence[confidence.isfinite()]
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    for i in range(images.shape[0]):
        row = [gray(images[i, 0], 0.0, 1.0), colorize(truth[i], ignore_index), colorize(prediction[i], ignore_index)]
        if pseudo is not None:
            row += [colorize(pseudo[i], ignore_index), gray(confidence[i], low, high)]
        rows.append(row)
    save_grid(path, rows)
