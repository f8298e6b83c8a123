"""scripts/split_lungs.py: the right / left lung masks of the three-class lung task."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
LUNG_DATA = ROOT.parent / "shared" / "datasets" / "nlm-cxr-lung-512"


@pytest.fixture(scope="module")
def split_lungs():
    spec = importlib.util.spec_from_file_location("split_lungs", ROOT / "scripts" / "split_lungs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_lungs(gap=(40, 50), width=100):
    lung = np.zeros((20, width), dtype=bool)
    lung[5:15, 10:gap[0]] = True
    lung[5:15, gap[1]:90] = True
    return lung


def test_each_lung_takes_its_side_of_the_widest_gap(split_lungs):
    lung = two_lungs()
    lung[:, 35] = False  # a one-column gap inside the right lung: narrower than the one between
    assert split_lungs.split_columns(lung) == 45
    sides = split_lungs.sides_mask(lung)
    assert set(np.unique(sides[:, :45])) == {0, 1} and set(np.unique(sides[:, 45:])) == {0, 2}
    assert ((sides > 0) == lung).all() and (sides[:, 36:40] == 1).any()


@pytest.mark.parametrize("lung, message", [
    (np.ones((20, 100), dtype=bool), "no lung-free column between the lungs"),
    (two_lungs(gap=(20, 30)), "no lung-free column"),  # the gap lies outside the middle 40 %
])
def test_masks_without_a_gap_between_the_lungs_are_refused(split_lungs, lung, message):
    with pytest.raises(ValueError, match=message):
        split_lungs.sides_mask(lung)


def test_a_mask_with_one_lung_is_refused(split_lungs):
    lung = two_lungs()
    lung[:, 50:] = False
    with pytest.raises(ValueError, match="one side holds no lung"):
        split_lungs.sides_mask(lung)


def test_the_folder_gets_three_class_masks_and_links_to_the_images(split_lungs, tmp_path):
    from PIL import Image

    data, out = tmp_path / "data", tmp_path / "out"
    for sub in ("images", "masks", "unlabeled"):
        (data / sub).mkdir(parents=True)
    Image.fromarray((255 * two_lungs()).astype(np.uint8)).save(data / "masks" / "a.png")
    Image.fromarray(np.zeros((20, 100), dtype=np.uint8)).save(data / "images" / "a.png")
    assert split_lungs.main(["--data", str(data), "--out", str(out)]) == 0
    written = np.asarray(Image.open(out / "masks" / "a.png"))
    assert (written == split_lungs.sides_mask(two_lungs())).all()
    assert (out / "images").resolve() == (data / "images").resolve() and (out / "unlabeled").is_symlink()
    Image.fromarray(np.full((20, 100), 255, dtype=np.uint8)).save(data / "masks" / "b.png")
    with pytest.raises(ValueError, match=r"b\.png: no lung-free column"):
        split_lungs.main(["--data", str(data), "--out", str(out)])


@pytest.mark.skipif(not LUNG_DATA.is_dir(), reason="the lung X-ray folder is not here")
def test_every_shenzhen_mask_splits(split_lungs):
    from PIL import Image

    for path in sorted((LUNG_DATA / "masks").glob("*.png")):
        with Image.open(path) as image:
            split_lungs.sides_mask(np.asarray(image.convert("L")) > 127)
