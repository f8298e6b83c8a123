"""Folder datasets: ``images/`` and ``masks/`` matched by file name, plus an
optional ``unlabeled/`` of images without masks.

Images are PNG (another image format in these folders is refused by name, not skipped),
grayscale or RGB (RGB is converted to grayscale, alpha dropped), read as float32 [1, H, W]
in [0, 1] by their bit depth (PIL reads a 16-bit PNG in colour or with alpha at 8 bits). A
mask (grayscale, palette, or RGB whose channels are equal; with alpha, unless its grey is
one value and its alpha marks regions, which is refused; not 16-bit in colour, which PIL
would cut to 8 bits) is read by this rule, C = ``num_classes`` (128 when None):

* all its values are < C: class indices, kept as they are;
* for two classes (C 2 or None), 0 and one value above 127 (0/255, 0/65535 ...): a
  binary mask, read as {0, 1};
* values < C (for C None: 0 and 1) and 255: class indices, 255 marking pixels to
  ignore (``IGNORE_LABEL``, as ``refmatch pseudo-label`` writes where it kept no label);
  a mask of 255 alone is all ignored, and one of 1 and 255 (no 0) is class 1 and ignored;
* for two classes, 0, values above 127 and values between them on the borders (edges
  of a resampled binary mask: all but a tenth of them off any plateau of one grey value
  or within 3 pixels of both a darker and a brighter pixel): binarised at half the
  brightest value into {0, 1} (a 16-bit mask's edge value 1000 is background);
* anything else (a class >= C, a colour mask, grey levels of more classes such as
  0/128/255) is an error naming the file.

The rule reads one file at a time, so a 0/1 mask whose only other value is 255 (no
foreground, some pixels to ignore: a ``refmatch pseudo-label`` file where no lung
was kept) reads as a 0/255 binary mask: keep such files out of masks/ (``refmatch pseudo-label``
names them in a warning and in its record).

PIL is imported when a file is read, so ``refmatch.data`` imports without the
``train`` extra. Files are opened per item and closed at once, so datasets pickle
into DataLoader workers.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..choices import listing
from ..sizes import size_pair

BINARY_THRESHOLD = 127
EDGE_REACH = 3             # pixels from a resampled binary mask's in-between value to both its sides
EDGE_EXCEPTIONS = 0.1      # in-between pixels allowed off the borders (the 566 lung masks: none)
OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".nii", ".gz", ".npy")
IGNORE_LABEL = 255      # a mask's "ignore this pixel"; the recipe's losses and bank skip it
MAX_INDEX_LABELS = 128  # without num_classes, larger values mean a 0/255 mask
CONFIG_CLASSES = "the config (classes)"  # what sets a training run's classes, as mask errors name it
GRAY_MODES = ("L", "I", "I;16", "I;16B", "I;16L")  # PIL modes read as they are
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {2: "RGB", 4: "grey + alpha", 6: "RGBA"}  # PNG colour types PIL reads at 8 bits only


def png_names(folder):
    """Sorted names of the PNG files directly in ``folder`` (.png or .PNG; hidden files such as
    macOS's ``._name.png`` left out). Raises ValueError naming image files of other formats
    (JPEG, TIFF, DICOM ...), and a folder whose PNGs all sit in subfolders (one per patient,
    say), which would otherwise be left out without a word."""
    entries = [path for path in Path(folder).iterdir() if not path.name.startswith(".")]
    files = [path for path in entries if path.is_file()]
    others = sorted(path.name for path in files if path.suffix.lower() in OTHER_IMAGE_SUFFIXES)
    if others:
        raise ValueError(f"{folder} holds {len(others)} image file(s) that are not PNG: {listing(others)}; "
                         "refmatch reads PNG only: convert them (a lossless format, for masks) or move them out")
    names = sorted(path.name for path in files if path.suffix.lower() == ".png")
    nested = [] if names else sorted(path.name + "/" for path in entries if path.is_dir() and holds_png(path))
    if nested:  # beside PNGs of its own, a subfolder is something else (pseudo-labels written there, say)
        raise ValueError(f"{folder} holds no PNG file itself but PNGs in subfolder(s) {listing(nested)}: refmatch "
                         "reads the PNGs directly in it; move them up")
    return names


def holds_png(folder):
    """Whether ``folder`` or a folder in it holds a PNG file (hidden ones aside)."""
    return any(not path.name.startswith(".") for path in Path(folder).rglob("*") if path.suffix.lower() == ".png")


def scan_folder(root):
    """{"labeled": names in both images/ and masks/, "unlabeled": names in the
    optional unlabeled/}, each sorted. Raises FileNotFoundError for a missing
    images/ or masks/, ValueError for an image without a mask or a mask without
    an image (labelled images belong in images/, unlabelled ones in unlabeled/)."""
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub} not found: a dataset folder needs images/ and masks/")
    images, masks = png_names(root / "images"), png_names(root / "masks")
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    masks_by_case = {name.lower(): name for name in no_image}
    pairs = [f"{name} / {masks_by_case[name.lower()]}" for name in no_mask if name.lower() in masks_by_case]
    if pairs:
        raise ValueError(f"{len(pairs)} image(s) in {root / 'images'} and their masks differ in letter case only "
                         f"(image / mask: {listing(pairs)}): an image and its mask need the same name exactly")
    problems = []
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) in {root / 'images'} have no mask in masks/: {listing(no_mask)}")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) in {root / 'masks'} have no image in images/: {listing(no_image)}")
    renamed = _renamed_pairs(no_mask, no_image)
    if renamed:
        pairs = [f"{image} / {mask}" for image, mask in renamed]
        problems.append(f"an image and its mask need the same file name (images/a.png, masks/a.png), and "
                        f"{len(pairs)} mask(s) look named after their image: {listing(pairs)}; rename them")
    if set(no_mask) - {image for image, _ in renamed}:
        problems.append("put images without masks in unlabeled/")
    if problems:
        raise ValueError("; ".join(problems))
    if not images:
        raise ValueError(f"no labelled images: {root / 'images'} and {root / 'masks'} hold no PNG files")
    unlabeled = png_names(root / "unlabeled") if (root / "unlabeled").is_dir() else []
    return {"labeled": images, "unlabeled": unlabeled}


def _renamed_pairs(no_mask, no_image):
    """(image, mask) for each mask whose name extends an image's stem past a separator (a.png /
    a_mask.png), the longest stem first, among images without a mask and masks without an image."""
    images = sorted(no_mask, key=lambda name: len(Path(name).stem), reverse=True)
    pairs = []
    for mask in no_image:
        stem = Path(mask).stem
        image = next((name for name in images if stem.startswith(Path(name).stem)
                      and not stem[len(Path(name).stem):][:1].isalnum()), None)  # a_mask, not 1 / 10
        if image is not None:
            pairs.append((image, mask))
    return pairs


def _png_header(path):
    """(bit depth, PNG colour type) from the file's IHDR chunk, or None for a file that is not
    PNG (or not there: the read that follows names it)."""
    if not Path(path).is_file():
        return None
    with open(path, "rb") as file:
        head = file.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _read_array(path, keep_modes):
    """The file's pixels as a numpy array ([H, W], or [H, W, channels] for a mode in
    ``keep_modes`` that has them); images whose PIL mode is not in ``keep_modes`` are
    converted to 8-bit grayscale. Raises FileNotFoundError or ValueError naming the file."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as image:
            if image.mode not in keep_modes:
                image = image.convert("L")
            return np.array(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # the last: over PIL's pixel limit
        raise ValueError(f"cannot read {path}: {error}") from error


def read_image(path):
    """A grayscale PNG as float32 [1, H, W] in [0, 1] (8- or 16-bit; RGB converted to L; a
    16-bit colour PNG at 8 bits, as PIL reads it: 12-bit data in it reads dark)."""
    array = _read_array(Path(path), GRAY_MODES)
    scale = 255.0 if array.dtype == np.uint8 else 65535.0  # 16-bit PNGs arrive as uint16 or int32
    return torch.from_numpy(array.astype(np.float32) / scale)[None]


def _on_borders(array, values):
    """Whether ``array``'s values strictly between its darkest and brightest lie on borders,
    as a resampled binary mask's do. A grey pixel is off the borders where it sits inside a
    plateau (its 3 x 3 neighbourhood all one value) with no darker and brighter pixel both
    within EDGE_REACH pixels; a class region of a grey-level multi-class mask is such a
    plateau, while edge ramps and thin lines shrunk below a pixel are not. True unless more
    than EDGE_EXCEPTIONS of the grey pixels are off the borders."""
    between = (array > values[0]) & (array < values[-1])
    pixels = torch.from_numpy(array).double()[None, None]

    def extremes(reach):  # brightest and darkest within ``reach`` pixels
        window = 2 * reach + 1
        return (F.max_pool2d(pixels, window, 1, reach)[0, 0].numpy(),
                -F.max_pool2d(-pixels, window, 1, reach)[0, 0].numpy())

    brightest, darkest = extremes(1)
    plateau = (brightest == array) & (darkest == array)
    brightest, darkest = extremes(EDGE_REACH)
    off_borders = between & plateau & ~((darkest < array) & (brightest > array))
    return off_borders.sum() <= EDGE_EXCEPTIONS * between.sum()


def read_mask(path, num_classes=None, classes_from="the data"):
    """A mask PNG as int64 [H, W] class labels (255: ignore), by the module's rule;
    ``classes_from`` names what set ``num_classes`` in an error (a checkpoint, say)."""
    header = _png_header(path)
    if header is not None and header[0] == 16 and header[1] in PNG_COLOUR_TYPES:
        raise ValueError(f"{path} is a 16-bit {PNG_COLOUR_TYPES[header[1]]} mask, which PIL reads cut to 8 bits "
                         "(class indices below 256 to 0): save it as a grayscale PNG without alpha")
    array = _read_array(Path(path), GRAY_MODES + ("P", "LA", "RGB", "RGBA")).astype(np.int64)  # palette: indices
    if array.ndim == 3:  # LA, RGB(A): a grey mask stored in colour, or a colour mask, which has no classes
        colour, alpha = (array[..., :-1], array[..., -1]) if array.shape[-1] in (2, 4) else (array, None)
        if (colour != colour[..., :1]).any():
            raise ValueError(f"{path} is a colour mask: store class indices (or 0/255) in a grayscale or "
                             "palette PNG")
        array = colour[..., 0]
        if alpha is not None and (array == array.flat[0]).all() and (alpha != alpha.flat[0]).any():
            raise ValueError(f"{path} marks its regions in the alpha channel alone (grey {array.flat[0]} "
                             f"everywhere, alpha {listing([str(v) for v in np.unique(alpha)])}): refmatch reads "
                             "the grey values; store the classes there (class indices or 0/255)")
    limit = MAX_INDEX_LABELS if num_classes is None else num_classes
    two_classes = num_classes in (None, 2)
    values = np.unique(array)
    if values.size == 0 or (values.min() >= 0 and values.max() < limit):
        return torch.from_numpy(array)
    binary = two_classes and values.min() >= 0 and values.max() > BINARY_THRESHOLD
    foreground = array > values.max() // 2  # half the bright value: 127 for 0/255, 32767 for 0/65535
    if binary and values.size <= 2 and values.min() == 0:  # 0 and one bright value
        return torch.from_numpy(foreground.astype(np.int64))
    classes = values[values != IGNORE_LABEL]
    if IGNORE_LABEL in values and (classes.size == 0 or (classes.min() >= 0 and classes.max() < (num_classes or 2))):
        return torch.from_numpy(array)  # class indices and ignored pixels (all ignored: no class at all)
    if binary and (values.size == 1 or _on_borders(array, values)):
        return torch.from_numpy(foreground.astype(np.int64))  # resampled binary, or one bright value alone
    fix = "; name the masks' classes in order in the config's classes" if classes_from == CONFIG_CLASSES else ""
    bad = [int(value) for value in classes if not 0 <= value < limit]
    indices_and_ignored = IGNORE_LABEL in values and (classes == np.arange(classes.size)).all()
    if indices_and_ignored and num_classes is None:
        raise ValueError(f"{path} holds class indices {listing([str(value) for value in classes])} and "
                         f"{IGNORE_LABEL} (ignored): without num_classes, a mask with ignored pixels reads as two "
                         "classes; pass num_classes")
    if binary and not (indices_and_ignored and bad):
        raise ValueError(f"{path} holds grey levels {listing([str(value) for value in values])} away from class "
                         "borders, not a resampled 0/255 mask: a mask of more classes? Store class indices "
                         f"0..C-1 ({IGNORE_LABEL} to ignore){fix}")
    binary_fits = "or a 0/255 binary mask" if two_classes else "a 0/255 binary mask fits 2 classes only"
    raise ValueError(f"{path} holds label(s) {listing([str(value) for value in bad])}, but {classes_from} has "
                     f"{limit} classes (labels 0..{limit - 1}, {IGNORE_LABEL} to ignore; {binary_fits}){fix}")


class FolderDataset(Dataset):
    """The images ``names`` of ``root/subfolder``, with masks from ``root/masks``.

    Args:
        root: dataset folder (see ``scan_folder``).
        names: file names to serve, in this order.
        size: None (native size), an int, or (H, W); images are resized bilinearly
            with antialiasing, masks by nearest neighbour.
        resize_masks: False keeps masks at their file's size (to score predictions
            there, after resizing them back).
        subfolder: where the images are ("images" or "unlabeled").
        with_masks: read ``root/masks/<name>`` too.
        num_classes: for the mask rule in the module docstring.
        classes_from: what set ``num_classes``, as a mask error names it ("the data", or
            a checkpoint's model where a command reads the classes from one).

    Item: {"image": [1, H, W] float32, "mask": [H, W] int64 (with_masks only), "name": str}.
    """

    def __init__(self, root, names, size=None, subfolder="images", with_masks=True, num_classes=None,
                 resize_masks=True, classes_from="the data"):
        self.root, self.names, self.size = Path(root), list(names), size_pair(size, "size")
        self.subfolder, self.with_masks, self.num_classes = subfolder, with_masks, num_classes
        self.resize_masks, self.classes_from = resize_masks, classes_from

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        name = self.names[index]
        image_path = self.root / self.subfolder / name
        image = read_image(image_path)
        item = {"image": image, "name": name}
        if self.with_masks:
            mask_path = self.root / "masks" / name
            mask = read_mask(mask_path, self.num_classes, self.classes_from)
            if mask.shape != image.shape[1:]:
                raise ValueError(f"{mask_path} is {tuple(mask.shape)} but {image_path} is {tuple(image.shape[1:])}: "
                                 "a mask needs its image's size (resize it with nearest neighbour)")
            item["mask"] = mask
        if self.size is not None:
            item["image"] = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True,
                                          align_corners=False)[0].clamp(0, 1)
            if "mask" in item and self.resize_masks:
                item["mask"] = F.interpolate(item["mask"][None, None].float(), size=self.size,
                                             mode="nearest-exact")[0, 0].long()
        return item
