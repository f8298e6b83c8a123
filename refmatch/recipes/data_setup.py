"""Datasets of a run, loaded once into tensors (the recipe's sets are small).

Holding every split in memory makes batches a seeded index draw, so training
and ``--resume`` replay exactly; loading itself runs on a worker pool.
"""
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch.utils.data import DataLoader

from ..data.folder import FolderDataset, scan_folder
from ..data.phantoms import CLASS_NAMES as PHANTOM_CLASSES
from ..data.phantoms import PhantomDataset
from ..data.splits import load_splits, make_splits, save_splits

UNKNOWN = -1  # mask value of truly unlabelled pixels (no hidden ground truth)


class Split(NamedTuple):
    images: torch.Tensor            # [n, 1, H, W] float32 in [0, 1]
    masks: torch.Tensor             # [n, H, W] int64, UNKNOWN where no mask exists
    names: list


class RunData(NamedTuple):
    labeled: Split
    unlabeled: Split
    val: Split
    test: Split
    class_names: tuple


def load_split(dataset, num_workers, size):
    """A Split of every item of ``dataset``, loaded in batches on a worker pool."""
    if len(dataset) == 0:
        return Split(torch.zeros(0, 1, size, size), torch.zeros(0, size, size, dtype=torch.long), [])
    loader = DataLoader(dataset, batch_size=16, num_workers=num_workers, shuffle=False)
    images, masks, names = [], [], []
    for batch in loader:
        images.append(batch["image"])
        masks.append(batch["mask"] if "mask" in batch else torch.full(batch["image"].shape[:1] + batch["image"].shape[2:],
                                                                      UNKNOWN, dtype=torch.long))
        names += list(batch["name"])
    return Split(torch.cat(images), torch.cat(masks), names)


def _concat(splits):
    return Split(torch.cat([s.images for s in splits]), torch.cat([s.masks for s in splits]),
                 [name for s in splits for name in s.names])


def _split_names(config, labeled_names, unlabeled_names):
    return make_splits(labeled_names, unlabeled_names, seed=config.seed,
                       num_labeled=config.num_labeled or None,
                       labeled_fraction=None if config.num_labeled else config.labeled_fraction,
                       val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                       min_test=config.min_test)


def prepare_data(config, run_dir: Optional[Path] = None):
    """Splits of the configured data as tensors; the split file is written to (or,
    when present, read back from) ``run_dir/splits.json``."""
    split_file = None if run_dir is None else Path(run_dir) / "splits.json"
    size = config.image_size
    if config.data == "phantom":
        phantoms = PhantomDataset(config.num_phantoms, size=size, seed=config.seed)
        names = [f"phantom_{i:05d}" for i in range(len(phantoms))]
        splits = load_splits(split_file) if split_file and split_file.exists() else _split_names(config, names, [])
        datasets = {key: [torch.utils.data.Subset(phantoms, [int(n.split("_")[-1]) for n in splits[key]])]
                    for key in ("labeled", "unlabeled", "val", "test")}
        class_names = PHANTOM_CLASSES
    else:
        root = Path(config.data)
        found = scan_folder(root)
        splits = load_splits(split_file) if split_file and split_file.exists() else \
            _split_names(config, found["labeled"], found["unlabeled"])
        hidden = [n for n in splits["unlabeled"] if n in set(found["labeled"])]
        truly = [n for n in splits["unlabeled"] if n not in set(found["labeled"])]
        datasets = {key: [FolderDataset(root, splits[key], size=size, num_classes=2)]
                    for key in ("labeled", "val", "test")}
        # Unlabelled: training images whose masks stay hidden (kept to measure
        # pseudo-label accuracy), then the images that have no mask at all.
        datasets["unlabeled"] = [FolderDataset(root, hidden, size=size, num_classes=2),
                                 FolderDataset(root, truly, size=size, subfolder="unlabeled", with_masks=False)]
        class_names = ("background", "lung")
    if split_file is not None and not split_file.exists():
        save_splits(splits, split_file)
    loaded = {key: _concat([load_split(part, config.num_workers, size) for part in parts])
              for key, parts in datasets.items()}
    return RunData(loaded["labeled"], loaded["unlabeled"], loaded["val"], loaded["test"], tuple(class_names))
