"""Bringing label masks from image resolution down to feature resolution."""
import torch
import torch.nn.functional as F

from .choices import check_choice

DOWNSAMPLING = ("majority", "labelled", "nearest", "pure")


def label_is(labels, value):
    """Bool tensor of ``labels`` (any integer dtype) equal to the integer ``value``, by value:
    torch's own ``==`` casts the number to the tensor's dtype, so a uint8 label 255 would equal
    -1 and an int8 label -1 would equal 255."""
    info = torch.iinfo(labels.dtype)
    if not info.min <= value <= info.max:
        return torch.zeros_like(labels, dtype=torch.bool)
    return labels == value


def _flattened_volume(mask_size, feature_size):
    """Whether [Z, H, W] masks fit features [z * h, w] flattened from a volume's: one stride."""
    height, width = feature_size if len(feature_size) == 2 else (0, 0)
    return len(mask_size) == 3 and width > 0 and mask_size[2] % width == 0 and \
        mask_size[0] * mask_size[1] == mask_size[2] // width * height


def check_masks(masks, batch, feature_size, num_classes, ignore_index):
    """Raise a named error unless ``masks`` is [batch, H, W] (for volumes [batch, Z, H, W])
    integer labels at an integer multiple of ``feature_size`` ((h, w) or (z, h, w)) holding
    classes < num_classes or ignore_index (None: classes only)."""
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    axes = ("H, W", "Z, H, W")[len(feature_size) - 2]
    integer = holds_integers(masks)
    as_long = "" if integer else ".long()"
    if masks.dim() != 1 + len(feature_size) or masks.shape[0] != batch:  # before the dtype: its hint fixes both
        extra_axis = masks.dim() == 2 + len(feature_size)
        hint = (f": pass masks[:, 0]{as_long} for a channel axis of one (MONAI's [B, 1, ...] labels)"
                if extra_axis and masks.shape[1] == 1 else
                ": one-hot masks? pass masks.argmax(1)" if extra_axis and masks.shape[1] == num_classes else
                ": volumes' features go in as they are, [B, D, z, h, w], not flattened"
                if extra_axis and _flattened_volume(masks.shape[1:], feature_size) else
                ": one volume's mask without its batch axis? pass masks[None]" if batch == 1 and masks.dim() == 3 and
                _multiple_of(masks.shape, feature_size) else
                ": 2-D masks, but the features are a volume [B, D, z, h, w] (a deep-supervision output "
                "[B, heads, C, H, W] looks like one: tap a decoder layer)" if masks.dim() == 3 == len(feature_size)
                else "")
        raise ValueError(f"masks must be [B={batch}, {axes}], got shape {tuple(masks.shape)}{hint}")
    if not integer:
        raise TypeError(f"masks must hold integer class labels, got {masks.dtype}: pass masks.long() if its "
                        "values are class indices")
    if not _multiple_of(masks.shape[1:], feature_size):
        raise ValueError(f"masks are {size_text(masks.shape[1:])} but features are {size_text(feature_size)}: "
                         "the mask size must be an integer multiple of the feature size (a strided layer rounds "
                         "an odd side up: tap with FeatureTap(size=...) at the masks' size or a divisor of it; "
                         "transformer tokens: check tokens_as_maps's grid)")
    valid = (masks >= 0) & (masks < num_classes)
    if ignore_index is not None:
        valid |= label_is(masks, ignore_index)
    if not bool(valid.all()):
        bad = masks[~valid][0].item()
        allowed = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"masks hold label {bad}, but labels must be in [0, {num_classes}){allowed}")


def holds_integers(labels):
    """Whether a tensor's dtype can hold class labels (not floating point, not bool)."""
    return not (labels.dtype.is_floating_point or labels.dtype == torch.bool)


def _multiple_of(sides, feature_size):
    """Whether ``sides`` are integer multiples of ``feature_size``, axis by axis."""
    return len(sides) == len(feature_size) and all(side >= f and side % f == 0 for side, f in zip(sides, feature_size))


def size_text(size):
    """(64, 64) -> "64x64", for messages."""
    return "x".join(str(side) for side in size)


def downsample_masks(masks, feature_size, num_classes, ignore_index, mode="majority"):
    """[B, H, W] labels -> [B, h, w] labels at feature resolution (volumes: [B, Z, H, W] ->
    [B, z, h, w], over blocks in all three axes).

    mode:
        "majority": each feature pixel takes the most frequent label of its
            (H/h x W/w) block; ignore_index where ignored pixels are the majority, or
            where two labels tie (a 2x2 block half lung, half background: taking the
            lower label eroded every class into background);
        "labelled": the most frequent label among the block's labelled pixels: ignored
            pixels abstain (sparse labels: scribbles, one labelled slice of a volume);
            ignore_index where none is labelled, or two labels tie;
        "nearest": the label of the pixel at the block's centre (the one after it, for an
            even side; torch's "nearest-exact": "nearest" takes the block's first pixel,
            half a block off);
        "pure": majority, but blocks that mix labels become ignore_index, which
            drops pixels on class borders.
    """
    check_choice("downsample", mode, DOWNSAMPLING)
    if mode == "nearest":
        return F.interpolate(masks[:, None].float(), size=tuple(feature_size), mode="nearest-exact")[:, 0].long()
    # One channel per class plus one for ignored pixels; block averages are label shares. Pooled
    # one class at a time: a one-hot of a CT volume ([B, Z, H, W, C + 1] int64) would not fit.
    slot = torch.where(label_is(masks, ignore_index), num_classes, masks.long())
    pool = F.avg_pool2d if len(feature_size) == 2 else F.avg_pool3d
    kernel = tuple(side // feature for side, feature in zip(masks.shape[1:], feature_size))
    share = torch.cat([pool((slot == c).float()[:, None], kernel) for c in range(num_classes + 1)], dim=1)
    if mode == "labelled":
        share = share[:, :num_classes]
    top_share, label = share.max(dim=1)
    no_majority = top_share < 1.0 if mode == "pure" else (share == top_share[:, None]).sum(dim=1) > 1
    return torch.where((label == num_classes) | no_majority | (top_share == 0), ignore_index, label)
