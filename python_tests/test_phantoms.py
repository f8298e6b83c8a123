"""Synthetic chest phantoms: determinism and plausibility (bench/test_bench_cpu.py times them)."""

import pytest
import torch
from torch.utils.data import DataLoader

from refmatch.data.phantoms import CLASS_NAMES, PhantomDataset, make_phantom

LUNG, HEART, CLAVICLE = (CLASS_NAMES.index(name) for name in ("lung", "heart", "clavicle"))


@pytest.fixture(scope="module")
def phantoms():
    dataset = PhantomDataset(12, size=128, seed=7)
    return [dataset[i] for i in range(len(dataset))]


def test_same_seed_same_phantom_and_different_seeds_differ():
    image, mask = make_phantom(3)
    again_image, again_mask = make_phantom(3)
    assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
    other_image, other_mask = make_phantom(4)
    assert not torch.equal(image, other_image) and not torch.equal(mask, other_mask)


def test_global_rng_does_not_matter():
    torch.manual_seed(1)
    image, _ = make_phantom(5)
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(image, make_phantom(5)[0])


def test_dataset_items_do_not_depend_on_access_order_or_instance():
    first = PhantomDataset(6, size=64, seed=1)
    backwards = [first[i] for i in reversed(range(6))][::-1]
    fresh = PhantomDataset(6, size=64, seed=1)
    for i, item in enumerate(backwards):
        assert item["name"] == f"phantom_{i:05d}"
        assert torch.equal(item["image"], fresh[i]["image"]) and torch.equal(item["mask"], fresh[i]["mask"])
    assert not torch.equal(PhantomDataset(6, size=64, seed=2)[0]["image"], fresh[0]["image"])
    assert not torch.equal(fresh[0]["image"], fresh[1]["image"])


def test_shapes_dtypes_and_range(phantoms):
    for item in phantoms:
        assert item["image"].shape == (1, 128, 128) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (128, 128) and item["mask"].dtype == torch.int64
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    image, mask = make_phantom(0, size=96)
    assert image.shape == (1, 96, 96) and mask.shape == (96, 96)
    assert PhantomDataset(3).num_classes == len(CLASS_NAMES) == 4


def test_anatomy_is_plausible(phantoms):
    columns = torch.arange(128.0)
    for item in phantoms:
        image, mask = item["image"][0], item["mask"]
        assert set(mask.unique().tolist()) == set(range(len(CLASS_NAMES)))
        lung_fraction = (mask == LUNG).float().mean().item()
        assert 0.08 < lung_fraction < 0.43  # the real Shenzhen masks' range
        # Lungs are air (dark); the heart sits right of centre (patient's left) and
        # below the clavicles.
        assert image[mask == LUNG].mean() < image[mask == HEART].mean() - 0.1
        heart_rows, heart_columns = (mask == HEART).nonzero(as_tuple=True)
        clavicle_rows = (mask == CLAVICLE).nonzero(as_tuple=True)[0]
        assert heart_columns.float().mean() > columns.mean()
        assert clavicle_rows.float().mean() < heart_rows.float().mean()
        # Both lung fields are present, one on each side.
        lung_columns = (mask == LUNG).nonzero(as_tuple=True)[1]
        assert (lung_columns < 50).any() and (lung_columns > 78).any()


def test_dataloader_workers_match_direct_access():
    dataset = PhantomDataset(4, size=32, seed=3)
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert batch["name"] == [f"phantom_{i:05d}" for i in range(4)]
    assert torch.equal(batch["image"], torch.stack([dataset[i]["image"] for i in range(4)]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        PhantomDataset(-1)
    with pytest.raises(IndexError, match="out of range"):
        PhantomDataset(2)[2]
