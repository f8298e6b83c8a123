"""The files ``refmatch pseudo-label`` writes for one image: labels/, confidence/ and overlays/."""
import numpy as np
import torch

from ..atomic_file import save_png_atomic


def save_pseudo_label(image_path, out, labels, confidence):
    """labels/, confidence/ and overlays/ PNGs of one image at its own size: the model's [h, w]
    labels [h, w] (nearest) and confidence (bilinear, 0..255 for 0..1) resized to the image.
    Returns the label values the file holds (a resize to a smaller image may drop some)."""
    from PIL import Image

    from ..data.folder import read_image
    from .methods import IGNORE
    from .visual import gray, overlay

    original = read_image(image_path)  # [1, H, W] in [0, 1]
    size = (original.shape[2], original.shape[1])  # PIL's (width, height)
    label_image = Image.fromarray(labels.numpy().astype(np.uint8)).resize(size, Image.NEAREST)
    confidence_image = Image.fromarray(gray(confidence, 0.0, 1.0)[..., 0]).resize(size, Image.BILINEAR)
    full_size_labels = torch.from_numpy(np.array(label_image)).long()
    # Atomic, labels last: an interrupted run leaves no half file, and a labels/ file only for a finished image.
    save_png_atomic(confidence_image, out / "confidence" / image_path.name)
    save_png_atomic(Image.fromarray(overlay(original, full_size_labels, ignore_index=IGNORE)),
                    out / "overlays" / image_path.name)
    save_png_atomic(label_image, out / "labels" / image_path.name)
    return set(np.unique(np.array(label_image)).tolist())


def reads_as_binary_mask(values):
    """Whether a two-class labels/ file of these values is a 0/255 binary mask to a mask reader."""
    from .methods import IGNORE

    return values == {0, IGNORE}
