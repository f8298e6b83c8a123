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
    Image.fromarray(np.ones((20, 100), dtype=np.uint8)).save(data / "masks" / "b.png")  # lung everywhere
    with pytest.raises(ValueError, match=r"b\.png: no lung-free column"):
        split_lungs.main(["--data", str(data), "--out", str(out)])


def test_sixteen_bit_masks_and_ignored_pixels_read_as_training_reads_them(split_lungs, tmp_path):
    """A resampled 16-bit edge below half the bright value is background (8-bit conversion clipped
    it to 255: lung); index masks keep their ignored pixels."""
    from PIL import Image

    data, out = tmp_path / "data", tmp_path / "out"
    (data / "masks").mkdir(parents=True)
    sixteen = (65535 * two_lungs()).astype(np.uint16)
    sixteen[10, 9] = 30000  # just outside the right lung's outer edge
    Image.fromarray(sixteen).save(data / "masks" / "a.png")
    indices = two_lungs().astype(np.uint8)
    indices[0, :5] = 255
    Image.fromarray(indices).save(data / "masks" / "b.png")
    assert split_lungs.main(["--data", str(data), "--out", str(out)]) == 0
    assert (np.asarray(Image.open(out / "masks" / "a.png")) == split_lungs.sides_mask(two_lungs())).all()
    written = np.asarray(Image.open(out / "masks" / "b.png"))
    assert (written[0, :5] == 255).all() and (written[1:] == split_lungs.sides_mask(two_lungs())[1:]).all()


def test_every_phantom_lung_mask_splits(split_lungs):
    """The synthetic chest phantoms' lungs (the heart bulging into one) split as the X-rays' do."""
    from refmatch.data.phantoms import make_phantom

    for seed in range(20):
        lung = make_phantom(seed, size=64)[1].numpy() == 1
        sides = split_lungs.sides_mask(lung)
        assert ((sides > 0) == lung).all()


@pytest.mark.skipif(not LUNG_DATA.is_dir(), reason="the lung X-ray folder is not here")
def test_every_shenzhen_mask_splits(split_lungs):
    from refmatch.data.folder import read_mask

    for path in sorted((LUNG_DATA / "masks").glob("*.png")):
        split_lungs.sides_mask(read_mask(path, num_classes=2).numpy() == 1)
