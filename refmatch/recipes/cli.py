"""``refmatch train | evaluate | pseudo-label``."""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load
from .config import TrainConfig, load_config
from .evaluation import evaluate
from .unet import UNet


def train_main(argv=None):
    parser = argparse.ArgumentParser(prog="refmatch train", description="Train a U-Net with one of the methods.")
    parser.add_argument("--config", type=Path, help="YAML file (configs/*.yaml)")
    parser.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/latest.pt")
    parser.add_argument("--stop-at", type=int, help="save and stop after this step (resume later)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # overrides may stand before and after options
    from .train import Trainer

    config = load_config(args.config, args.overrides)
    trainer = Trainer(config, args.out)
    try:
        if args.resume:
            trainer.resume()
        result = trainer.fit(stop_at=args.stop_at)
    finally:
        trainer.run.close()
    if result is not None and trainer.run.is_main:
        print(json.dumps({"method": result["method"], "test_mean_dice": result["test"]["mean_dice"],
                          "test_mean_iou": result["test"]["mean_iou"], "run": str(args.out)}, indent=2))
    return result


def _teacher(checkpoint_path, device):
    state = load(checkpoint_path, device)
    config = TrainConfig(**state["config"])
    classes = state["teacher"]["head.weight"].shape[0]
    model = UNet(1, classes, config.width, config.depth).to(device)
    model.load_state_dict(state["teacher"])
    return model.eval(), config, classes


def evaluate_main(argv=None):
    parser = argparse.ArgumentParser(prog="refmatch evaluate", description="Dice, IoU and HD95 of a checkpoint.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", required=True, help="folder with images/ and masks/, or 'phantom'")
    parser.add_argument("--out", type=Path, help="write metrics JSON here")
    args = parser.parse_args(argv)
    from ..data.folder import FolderDataset, scan_folder
    from ..data.phantoms import CLASS_NAMES, PhantomDataset
    from .data_setup import load_split

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config, classes = _teacher(args.checkpoint, device)
    if args.data == "phantom":
        split, names = load_split(PhantomDataset(config.num_phantoms, config.image_size, seed=config.seed + 1),
                             config.num_workers, config.image_size), CLASS_NAMES
    else:
        found = scan_folder(args.data)
        split = load_split(FolderDataset(args.data, found["labeled"], size=config.image_size, num_classes=classes),
                      config.num_workers, config.image_size)
        names = ("background", "lung") if classes == 2 else tuple(f"class{i}" for i in range(classes))
    metrics = evaluate(model, split, names, device)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return metrics


def _image_folder(root):
    root = Path(root)
    return root / "images" if (root / "images").is_dir() else root


def pseudo_label_main(argv=None):
    parser = argparse.ArgumentParser(prog="refmatch pseudo-label",
                                     description="Reference-guided pseudo-labels for a folder of images.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--labeled", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument("--unlabeled", type=Path, required=True, help="folder of PNG images (or with images/)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from PIL import Image

    from ..data.folder import FolderDataset, scan_folder
    from .data_setup import load_split
    from .methods import IGNORE, ReferencePseudoLabels
    from .visual import gray, overlay

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config, classes = _teacher(args.checkpoint, device)
    labeled = load_split(FolderDataset(args.labeled, scan_folder(args.labeled)["labeled"], size=config.image_size,
                                  num_classes=classes), config.num_workers, config.image_size)
    folder = _image_folder(args.unlabeled)
    names = sorted(p.name for p in folder.glob("*.png"))
    if not names:
        raise FileNotFoundError(f"no PNG images in {folder}")
    unlabeled = load_split(FolderDataset(folder.parent, names, size=config.image_size, subfolder=folder.name,
                                    with_masks=False), config.num_workers, config.image_size)
    source = ReferencePseudoLabels(model, config, classes, device)
    source.refresh(labeled.images.to(device), labeled.masks.to(device), config.batch_size)
    for sub in ("labels", "confidence", "overlays"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    kept = []
    for start in range(0, len(names), config.batch_size):
        images = unlabeled.images[start:start + config.batch_size]
        pseudo = source(images.to(device))
        kept.append(pseudo.kept_fraction.item())
        for i, name in enumerate(names[start:start + config.batch_size]):
            labels = pseudo.labels[i].cpu()
            Image.fromarray(labels.numpy().astype(np.uint8)).save(args.out / "labels" / name)
            Image.fromarray(gray(pseudo.confidence[i], 0.0, 1.0)[..., 0]).save(args.out / "confidence" / name)
            Image.fromarray(overlay(images[i], labels, ignore_index=IGNORE)).save(args.out / "overlays" / name)
    print(f"wrote pseudo-labels of {len(names)} images to {args.out} (kept {100 * np.mean(kept):.1f} % of pixels)")
