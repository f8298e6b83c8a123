"""The PNG grids of training runs and `compare-pseudo-labels`: panels where they belong, a
title strip naming the columns, a legend naming the class colours."""
import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from refmatch.recipes.visual import PALETTE, class_legend, save_grid, training_grid  # noqa: E402


def _read(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def _inked(strip):
    return (strip < 200).any(axis=-1)


def test_panels_sit_under_their_titles_above_the_legend(tmp_path):
    panels = [[np.full((8, 8, 3), 10 * (3 * r + c), np.uint8) for c in range(3)] for r in range(2)]
    save_grid(tmp_path / "grid.png", panels, ["one", "two,lines", ""], [(PALETTE[1], "lung")])
    canvas = _read(tmp_path / "grid.png")
    top, size, gap = 2 * 14 + 2, 128, 2  # two title lines; 8-pixel panels enlarged 16x
    assert canvas.shape == (top + 2 * (size + gap) + 18, 3 * (size + gap), 3)
    for r in range(2):
        for c in range(3):
            y, x = top + r * (size + gap), c * (size + gap)
            assert (canvas[y:y + size, x:x + size] == 10 * (3 * r + c)).all()
    title_ink = _inked(canvas[:top])
    assert title_ink[:14, :size].any() and title_ink[14:top, size + gap:2 * size].any()  # "lines" on line 2
    assert not title_ink[14:top, :size].any() and not title_ink[:, 2 * (size + gap):].any()
    legend = canvas[-18:].reshape(-1, 3)
    assert (legend == PALETTE[1]).all(axis=1).any()


def test_without_titles_or_legend_only_panels(tmp_path):
    save_grid(tmp_path / "grid.png", [[np.zeros((128, 128, 3), np.uint8)]])
    assert _read(tmp_path / "grid.png").shape == (130, 130, 3)


def test_training_grid_titles_its_five_columns_and_names_the_classes(tmp_path):
    images = torch.rand(2, 1, 16, 16)
    labels = torch.randint(0, 3, (2, 16, 16))
    confidence = torch.rand(2, 16, 16)
    training_grid(tmp_path / "grid.png", images, labels, labels, labels, confidence, 255,
                  ["background", "lung", "heart"])
    canvas = _read(tmp_path / "grid.png")
    assert canvas.shape[1] == 5 * 130
    title_ink = _inked(canvas[:30])
    assert all(title_ink[:, 130 * c:130 * c + 128].any() for c in range(5))
    legend = canvas[-18:].reshape(-1, 3)
    for color, _ in class_legend(["background", "lung", "heart"]):
        assert (legend == color).all(axis=1).any()
    assert [name for _, name in class_legend(["background", "lung"])] == ["background", "lung", "not kept / ignored"]


def test_every_class_a_config_may_name_has_a_colour_of_its_own():
    """Classes 8 to 12 of a 13-organ dataset all took the eighth colour, in grids and legends."""
    from refmatch.recipes.config import MAX_CLASSES

    colours = [tuple(colour) for colour, _ in class_legend([f"organ {c}" for c in range(MAX_CLASSES)])]
    assert len(set(colours)) == len(colours) == MAX_CLASSES + 1  # and the ignored grey


def test_the_first_sixteen_class_colours_stay_far_apart():
    """Golden-angle hues past the eighth colour made classes 5 and 15 alike (CIELAB distance 6;
    CIEDE2000 3.1 in a review): each further colour is now the one farthest from all before it."""
    import numpy as np

    from refmatch.recipes.visual import IGNORED, NO_MASK, lab

    colours = lab(np.concatenate([PALETTE[:16], [IGNORED, NO_MASK]]))
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[~np.eye(len(colours), dtype=bool)].min() > 20
    assert np.allclose(lab([[255, 255, 255], [0, 0, 0]]), [[100, 0, 0], [0, 0, 0]], atol=0.05)  # D65 white


def test_a_long_legend_wraps_onto_rows_that_show_every_class(tmp_path):
    names = ["background", *(f"organ number {c}" for c in range(1, 13))]
    labels = torch.arange(16 * 16).reshape(16, 16) % 13
    grid = training_grid(tmp_path / "grid.png", torch.rand(1, 1, 16, 16), labels[None], labels[None],
                         class_names=names)
    assert grid.shape[0] > 14 + 130 + 2 * 14  # titles, one row of panels, a legend of several rows
    legend = grid[14 + 130:].reshape(-1, 3)
    for color, _ in class_legend(names):
        assert (legend == color).all(axis=1).any()


def test_an_overlay_hatches_the_pixels_without_a_label():
    """Dropped pixels were drawn as the image itself, like background: now dark stripes."""
    from refmatch.recipes.visual import overlay

    image = torch.full((1, 8, 8), 0.5)
    plain = overlay(image, torch.zeros(8, 8, dtype=torch.long))
    dropped = overlay(image, torch.full((8, 8), 255))
    assert (plain == 128).all()
    assert (dropped < 128).any() and (dropped == 128).any()  # striped: some pixels darker, some as they were


def test_a_long_title_wraps_inside_its_column(tmp_path):
    panels = [[np.zeros((128, 128, 3), np.uint8)] * 2]
    save_grid(tmp_path / "grid.png", panels, ["method=meanteacher-pl,pl_temperature=0.05_and_more", ""])
    canvas = _read(tmp_path / "grid.png")
    top = canvas.shape[0] - 130
    assert top > 3 * 14  # wrapped onto more lines than the two commas give
    title_ink = _inked(canvas[:top])
    assert title_ink[:, :128].any() and not title_ink[:, 128:].any()


def test_pseudo_label_files_hold_classes_255_and_scaled_confidence(tmp_path):
    """refmatch pseudo-label's files of one image, written at the image's own size (twice the
    model's here): labels nearest-upscaled with 255 where none was kept, confidence 0..1 as 0..255."""
    from refmatch.recipes.pseudo_label_files import save_pseudo_label

    for sub in ("labels", "confidence", "overlays"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.full((8, 12), 128, dtype=np.uint8)).save(tmp_path / "x.png")
    labels = torch.tensor([[0, 1, 2, 255, 3, 1]] * 4)
    confidence = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0, 1.0]] * 4)
    save_pseudo_label(tmp_path / "x.png", tmp_path, labels, confidence)
    written = np.asarray(Image.open(tmp_path / "labels" / "x.png"))
    upscaled = labels.repeat_interleave(2, 0).repeat_interleave(2, 1).numpy()
    assert written.shape == (8, 12) and (written == upscaled).all()
    shade = np.asarray(Image.open(tmp_path / "confidence" / "x.png")).astype(int)
    assert shade.shape == (8, 12) and shade[:, 0].max() == 0 and shade[:, -1].min() == 255
    assert (np.diff(shade[0]) >= 0).all(), "bilinear between the model's pixels keeps the order"
    assert np.asarray(Image.open(tmp_path / "overlays" / "x.png")).shape == (8, 12, 3)


def test_a_list_value_keeps_its_commas_in_one_title_line(tmp_path):
    """compare-pseudo-labels titled pl_threshold=[0.2,0.5,0.5] as three lines that read as settings."""
    panels = [[np.zeros((256, 256, 3), np.uint8)]]  # wide enough for each change on one line
    save_grid(tmp_path / "grid.png", panels, ["pl_mode=hard,pl_threshold=[0.2,0.5,0.5]"])
    assert _read(tmp_path / "grid.png").shape[0] == 2 * 14 + 2 + 258  # two lines: the setting's two changes


def test_a_mask_less_images_truth_is_not_drawn_as_ignored_pixels(tmp_path):
    """Its truth panel was the grey that the legend calls "not kept / ignored"."""
    from refmatch.recipes.visual import IGNORED, NO_MASK

    images, labels = torch.rand(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    truth = labels.clone()
    truth[1] = -1  # an image from unlabeled/: no mask at all
    grid = training_grid(tmp_path / "grid.png", images, truth, labels, labels, torch.rand(2, 16, 16), 255,
                         ["background", "lung"])
    top = grid.shape[0] - 2 * 130 - 18
    panel = grid[top + 130:top + 258, 130:258].reshape(-1, 3)
    assert (panel == NO_MASK).all() and not (panel == IGNORED).all(axis=1).any()
    assert (grid[-18:].reshape(-1, 3) == NO_MASK).all(axis=1).any()  # and the legend says so
