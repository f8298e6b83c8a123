"""``refmatch train | evaluate`` (``pseudo-label``: pseudo_label.py)."""
import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..atomic_file import write_text_atomic
from ..choices import at_least
from .checkpoint import load, saved_teacher
from .config import data_location, load_config, unread_keys
from .evaluation import evaluate, evaluate_at_file_size, metrics_json


def train_main(argv=None):
    """``refmatch train [--config FILE] [--out DIR] [--resume] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="refmatch train", description="Train a U-Net with one of the methods.")
    parser.add_argument("--config", type=Path, help="YAML file (configs/*.yaml)")
    parser.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder (default: runs/latest)")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT/latest.pt with its saved config (key=value may change "
                             "steps, eval_every, image_every, num_workers, device)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds a run")
    parser.add_argument("--stop-at", type=at_least(1), help="save and stop after this step (resume later)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may stand before and after options
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    check_folder_argument(args.out, "--out")
    from .checkpoint import load_latest
    from .train import Trainer

    resumed = load_latest(args.out) if args.resume else None  # read once: its config here, its state in Trainer
    if resumed and args.stop_at is not None and args.stop_at <= resumed["step"]:
        parser.error(f"--stop-at {args.stop_at} is not after the step {args.out} was saved at ({resumed['step']})")
    config = load_config(args.config, args.overrides, base=resumed["config"] if resumed else None)
    config.data = data_location(config.data)
    unread = unread_keys(config, [item.split("=", 1)[0] for item in args.overrides])
    if unread:  # a config file may hold other methods' settings; a command line names its own
        print(f"refmatch train: warning: method={config.method} never reads {', '.join(unread)} (given on the "
              "command line)", file=sys.stderr)
    with Trainer(config, args.out, resume=resumed or False, overwrite=args.overwrite) as trainer:
        result = trainer.fit(stop_at=args.stop_at)
    if result is not None and trainer.run.is_main:
        print(metrics_json({"method": result["method"], "test_mean_dice": result["test"]["mean_dice"],
                            "test_mean_iou": result["test"]["mean_iou"], "run": str(args.out)}))
    return result


def checkpoint_teacher(checkpoint_path, device):
    """(the checkpoint's teacher U-Net on ``device``, its training config, its number of classes)."""
    model, config = saved_teacher(load(checkpoint_path, device), checkpoint_path, device)
    return model, config, model.head.out_channels


def evaluate_main(argv=None):
    """``refmatch evaluate``: a checkpoint's Dice, IoU and HD95 on a dataset, as JSON."""
    parser = argparse.ArgumentParser(prog="refmatch evaluate", description="Dice, IoU and HD95 of a checkpoint.")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a run's best.pt or latest.pt (its splits.json beside it)")
    parser.add_argument("--data", help="folder with images/ and masks/, or 'phantom' (default: the run's own data)")
    parser.add_argument("--split", choices=("test", "val", "all"), default="test",
                        help="the run's test or val images (splits.json beside the checkpoint; the default "
                             "reproduces metrics.json), or all: every labelled image of a folder, or "
                             "num_phantoms new phantoms")
    parser.add_argument("--resolution", choices=("training", "native"), default="training",
                        help="training: at the run's image_size, as metrics.json; native: predictions resized "
                             "to each mask file's own size and scored there, HD95 in its pixels (folders only)")
    parser.add_argument("--out", type=Path, help="also write the metrics JSON to this file (not over a file "
                        "that is not an earlier evaluate output)")
    args = parser.parse_args(argv)
    if args.out is not None:
        check_output_file(args.out, "--out")
        _check_earlier_output(args.out)
    from ..data.folder import FolderDataset, scan_folder
    from ..data.phantoms import CLASS_NAMES as PHANTOM_CLASSES
    from ..data.phantoms import PhantomDataset
    from ..data.splits import load_splits
    from .data_setup import (check_folder_fits_classes, dark_images, data_of_run, load_run_split, load_split,
                             model_class_names, warn_if_dark)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config, classes = checkpoint_teacher(args.checkpoint, device)
    args.data = data_of_run(config, args.data)
    if args.resolution == "native" and args.data == "phantom":
        raise ValueError("--resolution native scores masks at their files' size; phantoms are generated at "
                         "the run's image_size, which --resolution training already scores")
    if args.data == "phantom" and classes != len(PHANTOM_CLASSES):  # before generating them
        raise ValueError(f"{args.checkpoint} predicts {classes} classes, phantoms have {len(PHANTOM_CLASSES)} "
                         f"({', '.join(PHANTOM_CLASSES)}): evaluate it on the data it was trained for")
    if args.split != "all":
        split_file = args.checkpoint.parent / "splits.json"
        if not split_file.is_file():
            raise FileNotFoundError(f"{split_file} not found: --split {args.split} scores the run's own split; "
                                    "--split all scores every labelled image of --data")
        names = load_splits(split_file)[args.split]
        if not names:  # a run of test_fraction=0: an all-null JSON said nothing
            other = "val" if args.split == "test" else "test"
            raise ValueError(f"the run's {args.split} split holds no image: --split {other} or --split all")
        _check_split_in_data(names, args.data, args.split, config)
        status(f"evaluating on the run's {args.split} split: {len(names)} images")
    elif args.data == "phantom":  # seeded past the run's own phantoms
        status(f"evaluating on {config.num_phantoms} new phantoms")
        names = None
    else:
        names = scan_folder(args.data)["labeled"]
        status(f"evaluating on every labelled image of {args.data}: {len(names)} images")
    labels = model_class_names(config, classes)
    if args.data == "phantom":
        split = (load_run_split(config, {args.split: names}, args.split, args.data) if names is not None else
                 load_split(PhantomDataset(config.num_phantoms, config.image_size, seed=config.seed + 1),
                            config.num_workers, config.image_size))
        metrics = evaluate(model, split, labels, device)
    else:
        dataset = FolderDataset(args.data, names, size=config.image_size, num_classes=classes,
                                classes_from=f"the model of {args.checkpoint}",
                                resize_masks=args.resolution == "training")
        if args.resolution == "training":
            split = load_split(dataset, config.num_workers, config.image_size)
            check_folder_fits_classes(split, classes, args.data)
            warn_if_dark(dark_images(split.images, split.names), dataset.root / dataset.subfolder)
            metrics = evaluate(model, split, labels, device)
        else:
            metrics = evaluate_at_file_size(model, dataset, labels, device, num_workers=config.num_workers)
    metrics["resolution"] = (f"training ({config.image_size}x{config.image_size})" if args.resolution == "training"
                             else "native (each mask file's size)")
    text = metrics_json(metrics)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return metrics


def _check_earlier_output(path):
    """FileExistsError unless ``path`` is new, empty or an earlier evaluate's JSON: --out R/best.pt
    replaced the checkpoint it scored, --out R/metrics.json the run's result."""
    if not path.exists() or path.stat().st_size == 0:  # new, or made empty to be written (mktemp)
        return
    try:
        earlier = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        earlier = None
    # a run's metrics.json holds a resolution too, but its scores under "test", beside its config
    if not isinstance(earlier, dict) or not {"resolution", "mean_dice"} <= earlier.keys() or "config" in earlier:
        raise FileExistsError(f"--out {path} exists and is not an earlier output of evaluate (a checkpoint, or the "
                              "run's metrics.json?): name a new file")


def _check_split_in_data(names, data, key, config):
    """A run's split only makes sense on its own data: phantoms for a phantom run (they are
    generated from its config), else a folder holding every one of its names."""
    from ..data.folder import scan_folder

    if data == "phantom":
        missing = [] if config.data == "phantom" else list(names)
    else:
        labeled = set(scan_folder(data)["labeled"])
        missing = [name for name in names if name not in labeled]
    if missing:
        raise ValueError(f"{len(missing)} of the run's {len(names)} {key} images are not in {data} "
                         f"(e.g. {missing[0]}; the run trained on {config.data}): evaluate on the run's own "
                         "data, or pass --split all")


def status(message):
    """One progress line on stderr (stdout keeps the command's result)."""
    print(message, file=sys.stderr, flush=True)


def check_folder_argument(path, flag, given=None):
    """NotADirectoryError naming ``flag`` (and ``given``, what it was given: ``path`` by default)
    where ``path`` cannot be a folder: it, or the first of its parents that exists, is a file or a
    broken symbolic link (the system's own error names neither the flag nor the file). Returns
    that first existing folder."""
    existing = next(folder for folder in (path, *path.parents) if folder.exists() or folder.is_symlink())
    if existing.is_symlink() and not existing.exists():
        raise NotADirectoryError(f"{flag} {given or path}: {existing} is a broken symbolic link")
    if not existing.is_dir():
        raise NotADirectoryError(f"{flag} {given or path}: {existing} is not a folder")
    return existing


def check_output_file(path, flag):
    """OSError naming ``flag`` unless a file can be written at ``path`` (its missing folders are
    made when it is written): checked before the work whose result it keeps, not after."""
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder: name the file to write, e.g. {path / 'metrics.json'}")
    existing = check_folder_argument(path.parent, flag, given=path)
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{flag} {path}: the folder {existing} is not writable")
