"""Datasets of a run, loaded once into tensors (the recipe's sets are small).

Holding every split in memory makes batches a seeded index draw, so training
and ``--resume`` replay exactly; loading itself runs on a worker pool.
"""
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch.utils.data import DataLoader

from ..choices import listing
from ..data.folder import CONFIG_CLASSES, IGNORE_LABEL, FolderDataset, scan_folder
from ..data.phantoms import CLASS_NAMES as PHANTOM_CLASSES
from ..data.phantoms import PhantomDataset
from ..data.splits import load_splits, make_splits, save_splits
from .interrupts import worker_ignores_stops
from .progress import progress_bar

UNKNOWN = -1  # mask value of truly unlabelled pixels (no hidden ground truth)
FOLDER_CLASSES = ("background", "lung")  # a folder's classes when the config names none
DARK_LIMIT = 1 / 8  # 12-bit data in a 16-bit PNG reaches 1/16 of the range


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
    loader = DataLoader(dataset, batch_size=16, num_workers=num_workers, shuffle=False,
                        worker_init_fn=worker_ignores_stops)
    images, masks, names = [], [], []
    bar = progress_bar(len(dataset), "loading", delay=2.0)
    for batch in loader:
        bar.update(len(batch["name"]))
        images.append(batch["image"])
        unknown = torch.full(batch["image"].shape[:1] + batch["image"].shape[2:], UNKNOWN, dtype=torch.long)
        masks.append(batch["mask"] if "mask" in batch else unknown)
        names += list(batch["name"])
    bar.close()
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


def prepare_data(config, run_dir: Optional[Path] = None, reuse_splits=False, from_main=None):
    """Splits of the configured data as tensors. They are drawn from the config and written
    to ``run_dir/splits.json``; with ``reuse_splits`` (a resumed run) read back from it, and
    FileNotFoundError where it is missing.
    ``from_main(draw)`` runs ``draw`` once and hands its splits to every process: under DDP
    on rank 0, which alone has the run folder (a fresh draw elsewhere differs once the data
    folder has changed)."""
    split_file = None if run_dir is None else Path(run_dir) / "splits.json"
    reuse = reuse_splits and split_file is not None

    def draw():  # under torchrun on rank 0, which hands its error to every rank
        if reuse and not split_file.exists():
            raise FileNotFoundError(f"{split_file} is missing: the run's images were split by it, and a new draw "
                                    "differs where the data folder changed (images trained on would be tested); "
                                    "copy it back from where the run was written")
        if reuse:
            return load_splits(split_file)
        if config.data == "phantom":
            return _split_names(config, [f"phantom_{i:05d}" for i in range(config.num_phantoms)], [])
        found = scan_folder(config.data)
        return _split_names(config, found["labeled"], found["unlabeled"])

    splits = draw() if from_main is None else from_main(draw)
    if split_file is not None and not reuse:
        save_splits(splits, split_file)
    loaded = {key: load_run_split(config, splits, key) for key in ("labeled", "unlabeled", "val", "test")}
    if config.data != "phantom":
        warn_if_dark([name for split in loaded.values() for name in dark_images(split.images, split.names)],
                     config.data)
        check_masks(list(loaded.values()), class_names(config), config.data)
    return RunData(loaded["labeled"], loaded["unlabeled"], loaded["val"], loaded["test"], class_names(config))


def check_masks(splits, names, folder, chunk=64):
    """Check the masks of ``splits`` (the labelled split first; mask-less images' UNKNOWN ones
    aside) against the config's classes ``names``. Raises ValueError when the labelled masks
    hold no class pixel (all ignored: nothing to learn from), and when every mask holds just 0
    and 255 where there are more than two classes (a binary folder: 255 marks ignored pixels
    there, so its foreground is lost). Warns of some masks holding just 0 and 255 (a slice with
    no structure but an ignored region reads the same, hence a warning), of classes that no mask
    holds (a name too many, or a rare class), and of classes that only the other splits hold
    (the model never learns them). ``chunk`` masks at a time, vectorised: no per-mask sort, no
    copy of a whole split."""
    binary, counts = [], []
    for split in splits:
        counts.append(torch.zeros(len(names) + 2, dtype=torch.long))
        for start in range(0, split.masks.shape[0], chunk):
            flat = split.masks[start:start + chunk].flatten(1)
            if len(names) > 2:  # with two classes 0/255 is a binary mask, read as such
                zero, ignored = flat == 0, flat == IGNORE_LABEL
                only = (zero | ignored).all(1) & zero.any(1) & ignored.any(1)
                binary += [split.names[start + i] for i in only.nonzero()[:, 0].tolist()]
            # -1 (UNKNOWN) and labels >= C land in the two outer bins
            counts[-1] += torch.bincount(flat.clamp(-1, len(names)).flatten() + 1, minlength=len(names) + 2)
    labeled = splits[0]
    if labeled.names and counts[0][1:-1].sum() == 0:
        raise ValueError(f"the {len(labeled.names)} labelled mask(s) of {folder} ({listing(labeled.names)}) hold no "
                         f"class pixel: every pixel is {IGNORE_LABEL} (ignored); store the classes as 0..C-1 "
                         "(0/255 for a binary mask)")
    total = sum(counts)
    if len(names) > 2 and total[2:-1].sum() == 0 < total[-1]:  # 0 and 255 alone, all splits
        raise binary_folder_error(folder, len(names), CONFIG_CLASSES)
    if binary:
        warnings.warn(f"{len(binary)} mask(s) of {folder} hold only 0 and {IGNORE_LABEL} ({listing(binary)}): with "
                      f"{len(names)} classes {IGNORE_LABEL} marks ignored pixels, so they give background only; "
                      f"store a structure as its class index (1..{len(names) - 1})", stacklevel=3)
    absent = [f"{name!r} ({value})" for value, name in enumerate(names) if total[value + 1] == 0]
    if absent:
        warnings.warn(f"class(es) {', '.join(absent)} appear in no mask of {folder}: nothing to learn or score "
                      "them by; check classes (mask values 0..C-1 in order)", stacklevel=3)
    unlearned = [f"{name!r} ({value})" for value, name in enumerate(names)
                 if counts[0][value + 1] == 0 < total[value + 1]]
    if unlearned:
        warnings.warn(f"class(es) {', '.join(unlearned)} appear in none of the {len(labeled.names)} labelled masks "
                      f"of this run's split of {folder}, only in other splits: the model never learns them, nor "
                      "does refmatch's bank hold a reference of them; label more images (num_labeled, "
                      "labeled_fraction) or draw another split (seed)", stacklevel=3)


def data_of_run(config, data=None):
    """The data a command reads a run's images from: ``data`` where given ("phantom" or a
    folder), else the run's own, which refmatch train saves as an absolute path; a relative one
    (an older run's, or one trained from Python) or a folder gone since is refused, naming
    ``--data``."""
    if data is not None:
        return data
    if config.data != "phantom" and not Path(config.data).is_absolute():
        raise ValueError(f"the run saved its data folder as {config.data}, relative to where it trained: name it "
                         "with --data")
    if config.data != "phantom" and not Path(config.data).is_dir():
        raise FileNotFoundError(f"the run's data folder {config.data} is gone: name where it is now with --data")
    return config.data


def dark_images(images, names, chunk=64):
    """The names of ``images`` [n, 1, H, W] (scaled by their files' bit depth) whose brightest
    pixel stays below DARK_LIMIT, constant ones aside (a blank slice): 12-bit data stored in
    16-bit PNGs, which the model sees nearly black. Per image, so that bright images elsewhere
    in the folder do not hide them; by the brightest pixel, so that a dim image with a few
    bright structures (fluorescence, an end slice with a little tissue) is not named."""
    dark = []
    for start in range(0, images.shape[0], chunk):
        flat = images[start:start + chunk].flatten(1)
        if flat.shape[1]:
            brightest, darkest = flat.amax(dim=1), flat.amin(dim=1)
            named = ((brightest < DARK_LIMIT) & (brightest > darkest)).nonzero()[:, 0]
            dark += [names[start + i] for i in named.tolist()]
    return dark


def warn_if_dark(names, where):
    """Warn, naming some of them, that the images ``names`` of ``where`` (``dark_images``') read
    nearly black; nothing for none."""
    if names:
        warnings.warn(f"{len(names)} image(s) of {where} stay below {DARK_LIMIT:.3f} of their bit depth's range "
                      f"({listing(names)}): 12-bit data in 16-bit PNGs? The model sees them nearly black: rescale "
                      "the files to their full range", stacklevel=2)


def class_names(config):
    """The run's class names, index order: the phantoms', the config's ``classes``, or
    background and lung."""
    if config.data == "phantom":
        return PHANTOM_CLASSES
    return tuple(config.classes) or FOLDER_CLASSES


def model_class_names(config, num_classes):
    """The class names of a checkpoint's model of ``num_classes`` outputs: its run's, or class0,
    class1 ... where they do not fit."""
    names = class_names(config)
    return names if len(names) == num_classes else tuple(f"class{i}" for i in range(num_classes))


def load_run_split(config, splits, key, data=None):
    """The Split of ``splits[key]`` (names of a run's split) from ``data`` (default: the run's
    ``config.data``): phantom indices, or names in a folder with images/ and masks/."""
    data, size, classes = data or config.data, config.image_size, len(class_names(config))
    if data == "phantom":
        phantoms = PhantomDataset(config.num_phantoms, size=size, seed=config.seed)
        parts = [torch.utils.data.Subset(phantoms, [int(n.split("_")[-1]) for n in splits[key]])]
    elif key != "unlabeled":
        parts = [FolderDataset(data, splits[key], size=size, num_classes=classes, classes_from=CONFIG_CLASSES)]
    else:
        # Unlabelled: training images whose masks stay hidden (kept to measure
        # pseudo-label accuracy), then the images that have no mask at all.
        labeled = set(scan_folder(data)["labeled"])
        parts = [FolderDataset(data, [n for n in splits[key] if n in labeled], size=size, num_classes=classes,
                               classes_from=CONFIG_CLASSES),
                 FolderDataset(data, [n for n in splits[key] if n not in labeled], size=size,
                               subfolder="unlabeled", with_masks=False)]
    return _concat([load_split(part, config.num_workers, size) for part in parts])


def check_folder_fits_classes(split, num_classes, folder):
    """ValueError when a model of more than two classes meets a folder whose masks hold only 0
    and 255: a binary (0/255) folder, which for such a model reads as background and ignored
    pixels (every foreground Dice 0, nothing to learn from)."""
    values = set(split.masks.unique().tolist())
    if num_classes > 2 and IGNORE_LABEL in values and values <= {0, IGNORE_LABEL}:
        raise binary_folder_error(folder, num_classes, "the model")


def binary_folder_error(folder, num_classes, classes_from):
    """The ValueError for a folder of 0/255 masks read with ``num_classes`` > 2 classes, which
    ``classes_from`` (the model, the config) sets: its foreground would read as ignored pixels."""
    fix = "" if classes_from != CONFIG_CLASSES else \
        f"; name two classes for a binary folder, or store each structure as its class index 1..{num_classes - 1}"
    return ValueError(f"every mask in {folder} holds only 0 and {IGNORE_LABEL}: a binary folder, but {classes_from} "
                      f"has {num_classes} classes, for which {IGNORE_LABEL} means an ignored pixel{fix}")
