"""A three-class copy of the lung X-ray folder: background, right lung and left lung.

    python scripts/split_lungs.py [--data ../shared/datasets/nlm-cxr-lung-512] [--out runs/data/lung-sides-512]

The Shenzhen masks merge both lungs. In every one of their 566 masks the mediastinum leaves
columns without lung in the middle of the image, so each mask splits at the centre of the widest
such gap in the middle 40 % of its width: lung left of it is the patient's right lung (class 1,
as radiographs are viewed facing the patient), lung right of it the left lung (class 2). A
mask without such a gap, or with a side left empty, is refused by name. Masks are read as training
reads them (refmatch.data.folder.read_mask) and written as 0/1/2 PNGs, 255 where the source
ignores; images/ and unlabeled/ link to the originals (nothing is copied). Train with
configs/lung_sides_cpu.yaml, whose ``classes`` name the three.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

BAND = (0.3, 0.7)  # where the gap between the lungs is looked for, as fractions of the width


def split_columns(lung):
    """Column where a binary lung mask [H, W] splits into right and left lung: the centre
    of the widest run of empty columns within ``BAND``; ValueError without one."""
    width = lung.shape[1]
    first, last = int(BAND[0] * width), int(BAND[1] * width)
    empty = ~lung[:, first:last].any(axis=0)
    best, run_start = None, None
    for column, is_empty in enumerate(list(empty) + [False]):
        if is_empty and run_start is None:
            run_start = column
        elif not is_empty and run_start is not None:
            if best is None or column - run_start > best[1] - best[0]:
                best = (run_start, column)
            run_start = None
    if best is None:
        raise ValueError("no lung-free column between the lungs")
    return first + (best[0] + best[1]) // 2


def sides_mask(lung):
    """[H, W] uint8: 0 background, 1 right lung (image left), 2 left lung."""
    column = split_columns(lung)
    sides = np.zeros(lung.shape, dtype=np.uint8)
    sides[:, :column][lung[:, :column]] = 1
    sides[:, column:][lung[:, column:]] = 2
    if not (sides == 1).any() or not (sides == 2).any():
        raise ValueError("one side holds no lung")
    return sides


def main(argv=None):
    from PIL import Image
    from tqdm import tqdm

    from refmatch.data.folder import IGNORE_LABEL, read_mask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/nlm-cxr-lung-512"))
    parser.add_argument("--out", type=Path, default=Path("runs/data/lung-sides-512"))
    args = parser.parse_args(argv)
    masks = sorted((args.data / "masks").glob("*.png"))
    if not masks:
        raise FileNotFoundError(f"no masks in {args.data / 'masks'}")
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    for sub in ("images", "unlabeled"):
        link = args.out / sub
        if (args.data / sub).is_dir() and not link.exists():
            link.symlink_to((args.data / sub).resolve(), target_is_directory=True)
    for path in tqdm(masks, desc="splitting masks", unit="mask"):
        mask = read_mask(path, num_classes=2).numpy()  # as training reads it: 8 or 16 bits, resampled edges
        try:
            sides = sides_mask(mask == 1)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        sides[mask == IGNORE_LABEL] = IGNORE_LABEL
        Image.fromarray(sides).save(args.out / "masks" / path.name)
    print(f"wrote {len(masks)} masks (0 background, 1 right lung, 2 left lung) to {args.out / 'masks'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
