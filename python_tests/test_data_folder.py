"""Folder datasets of PNGs, the real lung data when present, and seeded splits."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from refmatch.data import FolderDataset, load_splits, make_splits, save_splits, scan_folder

LUNG_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "nlm-cxr-lung-512"


def write_png(path, array):
    """An 8-bit PNG: grayscale (L) from [H, W], RGB from [H, W, 3]."""
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture
def dataset_root(tmp_path):
    """images/: gray.png (L) and rgb.png (RGB); masks/: a resampled 0/255 mask and
    an index mask; unlabeled/: one image."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 16))
    write_png(tmp_path / "images" / "gray.png", gray)
    write_png(tmp_path / "images" / "rgb.png", rng.integers(0, 256, (12, 16, 3)))
    binary = np.zeros((12, 16), dtype=np.uint8)
    binary[2:8, 3:9] = 255
    binary[8, 3:9] = 200   # resampled edge: foreground
    binary[9, 3:9] = 100   # resampled edge: background
    write_png(tmp_path / "masks" / "gray.png", binary)
    write_png(tmp_path / "masks" / "rgb.png", np.indices((12, 16))[1] % 3)
    write_png(tmp_path / "unlabeled" / "extra.png", gray)
    (tmp_path / "images" / "._gray.png").write_bytes(b"macOS metadata")  # hidden: never an image
    return tmp_path, gray, binary


def test_scan_and_round_trip(dataset_root):
    root, gray, binary = dataset_root
    assert scan_folder(root) == {"labeled": ["gray.png", "rgb.png"], "unlabeled": ["extra.png"]}
    gray_item, rgb_item = FolderDataset(root, ["gray.png", "rgb.png"])
    assert gray_item["name"] == "gray.png" and gray_item["image"].dtype == torch.float32
    assert torch.allclose(gray_item["image"][0], torch.from_numpy(gray / 255.0).float())
    assert torch.equal(gray_item["mask"], torch.from_numpy((binary > 127).astype(np.int64)))
    expected_rgb = np.asarray(pytest.importorskip("PIL.Image").open(root / "images" / "rgb.png").convert("L")) / 255.0
    assert rgb_item["image"].shape == (1, 12, 16)
    assert torch.allclose(rgb_item["image"][0], torch.from_numpy(expected_rgb).float())
    assert torch.equal(rgb_item["mask"], torch.arange(16).expand(12, 16) % 3)  # indices kept
    unlabeled = FolderDataset(root, ["extra.png"], subfolder="unlabeled", with_masks=False)[0]
    assert set(unlabeled) == {"image", "name"}


def test_resize(dataset_root):
    root, _, _ = dataset_root
    item = FolderDataset(root, ["gray.png"], size=(6, 8), num_classes=2)[0]
    assert item["image"].shape == (1, 6, 8) and item["mask"].shape == (6, 8)
    assert set(item["mask"].unique().tolist()) == {0, 1} and item["mask"].dtype == torch.int64
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    with pytest.raises(ValueError, match="size"):
        FolderDataset(root, ["gray.png"], size=(6, 0))


def test_multiclass_mask_with_stray_value_is_an_error(dataset_root):
    root, _, _ = dataset_root
    with pytest.raises(ValueError, match="gray.png holds label.s. .*but the data has 3 classes"):
        FolderDataset(root, ["gray.png"], num_classes=3)[0]


def test_a_binary_mask_against_a_checkpoint_of_more_classes_names_the_checkpoint(tmp_path):
    """A command that takes its classes from a checkpoint says so, and that 0/255 masks fit two
    classes only (the message offered 'or a 0/255 binary mask' to a 4-class model)."""
    from PIL import Image

    from refmatch.data.folder import read_mask

    pixels = np.zeros((4, 8), dtype=np.uint8)
    pixels[:, 4:], pixels[:, 3] = 255, 128  # a resampled edge between 0 and 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=r"holds label\(s\) 128, but the model of run/best.pt has 4 classes "
                                         r"\(labels 0..3, 255 to ignore; a 0/255 binary mask fits 2 classes only\)"):
        read_mask(tmp_path / "mask.png", 4, classes_from="the model of run/best.pt")
    assert sorted(read_mask(tmp_path / "mask.png", 2).unique().tolist()) == [0, 1]


@pytest.mark.parametrize("values, num_classes, expected", [
    ([0, 1, 255], 2, [0, 1, 255]),   # class indices, 255 ignored (as pseudo-label writes them)
    ([0, 255], 2, [0, 1]),           # a binary mask
    ([0, 1, 2, 255], 3, [0, 1, 2, 255]),
    ([0, 1, 2], 2, "holds label.s. 2, but the data has 2 classes"),  # a class beyond the data's
    ([1, 255], 2, [1, 255]),         # class 1 and ignored (no 0: no binary mask; it read swapped, as 0/1)
    ([1, 255], None, [1, 255]),
    ([255], 2, [255]),               # all ignored (it read as all class 1) ...
    ([255], 3, [255]),               # ... and crashed in numpy for 3 classes
    ([254, 255], 2, [1]),            # a resampled all-foreground binary mask
])
def test_mask_rule(tmp_path, values, num_classes, expected):
    from PIL import Image

    from refmatch.data.folder import read_mask

    pixels = np.array(values * 4, dtype=np.uint8).reshape(4, -1)
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            read_mask(tmp_path / "mask.png", num_classes)
    else:
        assert sorted(read_mask(tmp_path / "mask.png", num_classes).unique().tolist()) == expected


def test_grey_levels_off_the_borders_are_refused_and_resampled_edges_kept(tmp_path):
    from PIL import Image

    from refmatch.data.folder import read_mask

    three = np.zeros((32, 32), dtype=np.uint8)
    three[4:14, 4:28], three[18:28, 4:28] = 128, 255  # three classes in grey levels (they read as two)
    Image.fromarray(three).save(tmp_path / "three.png")
    for num_classes in (None, 2):
        with pytest.raises(ValueError, match="three.png holds grey levels 0, 128, 255 away from class borders"):
            read_mask(tmp_path / "three.png", num_classes)
    nested = np.zeros((64, 64), dtype=np.uint8)
    nested[8:56, 8:56], nested[20:44, 20:44] = 128, 255  # lungs inside a body: the grey touches both sides
    Image.fromarray(nested).save(tmp_path / "nested.png")
    with pytest.raises(ValueError, match="nested.png holds grey levels 0, 128, 255"):
        read_mask(tmp_path / "nested.png", 2)
    binary = np.zeros((128, 128), dtype=np.uint8)
    binary[((np.indices((128, 128)) - 64) ** 2).sum(0) < 40 ** 2] = 255
    binary[20:22, :], binary[:, 100:103] = 255, 255  # thin lines: all grey once shrunk by 4
    shrunk = Image.fromarray(binary).resize((16, 16), Image.BILINEAR)
    for resampled in (np.array(Image.fromarray(binary).resize((32, 32), Image.BILINEAR)),
                      np.array(Image.fromarray(binary).resize((32, 32), Image.BOX)),
                      np.array(shrunk.resize((64, 64), Image.NEAREST))):  # grey plateaus 4 pixels wide
        assert 3 < np.unique(resampled).size  # edges in between
        Image.fromarray(resampled).save(tmp_path / "resampled.png")
        assert torch.equal(read_mask(tmp_path / "resampled.png"), torch.from_numpy((resampled > 127).astype(np.int64)))


def test_a_16_bit_binary_mask_is_split_at_half_its_bright_value(tmp_path):
    from PIL import Image

    from refmatch.data.folder import read_mask

    mask = np.zeros((8, 8), dtype=np.uint16)
    mask[2:6, 2:6] = 65535
    mask[6, 2:6], mask[1, 2:6] = 1000, 40000  # resampled edges: background, foreground
    Image.fromarray(mask).save(tmp_path / "mask16.png")
    expected = np.zeros((8, 8), dtype=np.int64)
    expected[1:6, 2:6] = 1
    assert torch.equal(read_mask(tmp_path / "mask16.png", 2), torch.from_numpy(expected))


def test_images_in_other_formats_are_refused_by_name(dataset_root):
    from PIL import Image

    root, gray, _ = dataset_root
    Image.fromarray(gray.astype(np.uint8)).save(root / "unlabeled" / "scan_001.jpg")
    with pytest.raises(ValueError, match=r"unlabeled holds 1 image file.s. that are not PNG: scan_001.jpg"):
        scan_folder(root)
    (root / "unlabeled" / "scan_001.jpg").unlink()
    write_png(root / "unlabeled" / "patient 7" / "day 2" / "a.png", gray)  # one folder per patient
    (root / "unlabeled" / "empty").mkdir()
    assert scan_folder(root)["unlabeled"] == ["extra.png"]  # beside its own PNGs: pseudo-labels written there, say
    (root / "unlabeled" / "extra.png").unlink()
    with pytest.raises(ValueError, match=r"unlabeled holds no PNG file itself but PNGs in subfolder.s. patient 7/"):
        scan_folder(root)


def test_colour_masks_are_refused_and_gray_ones_in_rgb_read(tmp_path):
    from PIL import Image

    from refmatch.data.folder import read_mask

    colour = np.zeros((4, 4, 3), dtype=np.uint8)
    colour[1:3, 1:3, 0] = 255  # red lung
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour.png is a colour mask"):
        read_mask(tmp_path / "colour.png", 2)
    Image.fromarray(np.repeat(colour[..., :1], 3, axis=2)).save(tmp_path / "gray_in_rgb.png")
    assert read_mask(tmp_path / "gray_in_rgb.png", 2).sum().item() == 4


def test_corrupt_and_missing_files_are_named(dataset_root):
    root, _, _ = dataset_root
    (root / "masks" / "rgb.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"masks.rgb\.png"):
        FolderDataset(root, ["rgb.png"])[0]
    (root / "images" / "gray.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"cannot read .*images.gray\.png"):
        FolderDataset(root, ["gray.png"])[0]
    image = root / "images" / "rgb.png"
    image.write_bytes(image.read_bytes()[:len(image.read_bytes()) // 2])  # cut inside the pixel data
    with pytest.raises(ValueError, match=r"cannot read .*images.rgb\.png"):
        FolderDataset(root, ["rgb.png"], with_masks=False)[0]


def test_mask_of_another_size_is_an_error(dataset_root):
    root, _, _ = dataset_root
    write_png(root / "masks" / "gray.png", np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"masks.gray\.png is \(5, 5\) .*: a mask needs its image's size"):
        FolderDataset(root, ["gray.png"])[0]


def test_scan_errors_name_the_files(dataset_root):
    root, gray, _ = dataset_root
    write_png(root / "images" / "lonely.png", gray)
    write_png(root / "masks" / "lonely2.png", gray)  # not named after lonely.png, as 10.png is not after 1.png
    with pytest.raises(ValueError, match="lonely.png.*lonely2.png.*; put images without masks in unlabeled/$"):
        scan_folder(root)
    write_png(root / "masks" / "lonely_mask.png", gray)  # named after its image: rename it, not unlabeled/
    with pytest.raises(ValueError, match=r"look named after their image: lonely.png / lonely_mask.png; rename them$"):
        scan_folder(root)
    (root / "masks" / "lonely_mask.png").unlink()
    write_png(root / "masks" / "Lonely.PNG", gray)
    with pytest.raises(ValueError, match=r"1 image.s. in .*images and their masks differ in letter case only "
                                         r"\(image / mask: lonely.png / Lonely.PNG\): .* the same name exactly$"):
        scan_folder(root)
    with pytest.raises(FileNotFoundError, match="images"):
        scan_folder(root / "unlabeled")
    empty = root / "empty"
    for sub in ("images", "masks"):
        (empty / sub).mkdir(parents=True)
    with pytest.raises(ValueError, match="no labelled images: .*images and .*masks hold no PNG files"):
        scan_folder(empty)


def test_dataloader_with_workers(dataset_root):
    root, _, _ = dataset_root
    dataset = FolderDataset(root, ["gray.png", "rgb.png"], size=8)
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=2)))
    assert batch["image"].shape == (2, 1, 8, 8) and batch["mask"].shape == (2, 8, 8)
    assert batch["name"] == ["gray.png", "rgb.png"]
    assert torch.equal(batch["image"][1], dataset[1]["image"])


@pytest.mark.skipif(not LUNG_DATA.is_dir(), reason=f"real lung data not found at {LUNG_DATA}")
def test_real_lung_data():
    pytest.importorskip("PIL")
    found = scan_folder(LUNG_DATA)
    assert len(found["labeled"]) == 566 and len(found["unlabeled"]) == 96
    dataset = FolderDataset(LUNG_DATA, found["labeled"][:2], size=128, num_classes=2)
    for item in dataset:
        assert item["image"].shape == (1, 128, 128) and item["mask"].shape == (128, 128)
        assert set(item["mask"].unique().tolist()) == {0, 1}
        assert 0.05 < item["mask"].float().mean() < 0.5
    from refmatch.data.folder import read_mask

    for name in found["labeled"][::14]:  # resampled edges on the borders (all 566: session 25)
        assert set(read_mask(LUNG_DATA / "masks" / name, 2).unique().tolist()) == {0, 1}
    unlabeled = FolderDataset(LUNG_DATA, found["unlabeled"][:1], size=128, subfolder="unlabeled", with_masks=False)
    assert unlabeled[0]["image"].shape == (1, 128, 128)


NAMES = [f"case_{i:03d}.png" for i in range(100)]


def test_splits_sizes_disjoint_and_deterministic():
    splits = make_splits(NAMES, ["free_1.png", "free_0.png"], seed=3, labeled_fraction=0.1, min_test=25)
    sizes = {key: len(splits[key]) for key in ("labeled", "unlabeled", "val", "test")}
    # test max(25, 20) = 25, val 10, training 65: round(6.5) = 6 labelled, 59 + 2 unlabelled.
    assert sizes == {"labeled": 6, "unlabeled": 61, "val": 10, "test": 25}
    groups = [set(splits[key]) for key in ("labeled", "unlabeled", "val", "test")]
    assert set().union(*groups) == set(NAMES) | {"free_0.png", "free_1.png"}
    assert sum(map(len, groups)) == 102
    assert make_splits(NAMES[::-1], ["free_0.png", "free_1.png"], seed=3, labeled_fraction=0.1, min_test=25) == splits
    other = make_splits(NAMES, seed=4, labeled_fraction=0.1, min_test=25)
    assert other["test"] != splits["test"]
    assert len(make_splits(NAMES, seed=0, num_labeled=1)["labeled"]) == 1


@pytest.mark.parametrize("arguments, message", [
    (dict(), "exactly one"),
    (dict(num_labeled=3, labeled_fraction=0.1), "exactly one"),
    (dict(num_labeled=71), "num_labeled"),
    (dict(labeled_fraction=0.0), "labeled_fraction"),
    (dict(labeled_fraction=0.1, test_fraction=1.5), "test_fraction"),
    (dict(labeled_fraction=0.1, min_test=95), "no training images"),
    (dict(num_labeled=1, unlabeled_names=NAMES[:1]), "1 name.s. are both labelled and unlabelled: .* must not share"),
    (dict(names=NAMES[:4], num_labeled=1), "val_fraction=0.1 of 4 labelled names rounds to no image"),
    # no fraction could split these: "raise val_fraction" sent users in a circle
    (dict(names=NAMES[:1], num_labeled=1), r"1 labelled name.s.: a split needs at least 3 \(one to train on, one to "
                                           r"validate on, 1 to test on\): label more images"),
    (dict(names=NAMES[:3], num_labeled=1, min_test=2), "3 labelled name.s.: a split needs at least 4"),
])
def test_split_argument_errors(arguments, message):
    arguments = {"names": NAMES, **arguments}
    with pytest.raises(ValueError, match=message):
        make_splits(arguments.pop("names"), seed=0, **arguments)


def test_splits_json_round_trip(tmp_path):
    splits = make_splits(NAMES, ["free.png"], seed=5, num_labeled=4)
    path = tmp_path / "run" / "splits.json"
    save_splits(splits, path)
    assert load_splits(path) == splits
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left
    path.write_text('{"labeled": []}')
    with pytest.raises(ValueError, match="not a splits file"):
        load_splits(path)
