"""Segmentation metrics: Dice and IoU per class over a whole set, and HD95.

Conventions:

* Dice and IoU pool the set: per class, the sum of intersections over all images
  divided by the sums of areas (not a mean of per-image scores). A class absent
  from both prediction and truth everywhere is NaN, and is left out of means.
* HD95 is in pixels times ``spacing``, between the inner boundaries of two masks
  (MONAI's convention: the larger of the two directed 95th percentiles of
  boundary-to-boundary distances; MedPy's hd95 takes the percentile of both
  directions pooled, mostly smaller). Both masks empty: 0.0. Exactly one empty:
  inf, since no distance exists; a class mean that includes it is inf too (the
  recipes write it to JSON files as null). MONAI gives NaN in both empty cases and
  its means skip them, so a missed organ costs nothing there; its Dice of an empty
  truth is NaN too (ignore_empty), where the pooled Dice here counts the prediction.
"""
import math

import numpy as np
import torch


def _as_labels(labels, name):
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() not in (2, 3):
        raise ValueError(f"{name} must be integer labels [B, H, W] or [H, W], got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    return labels.long().reshape(-1, *labels.shape[-2:])


def _image_pairs(pred, truth):
    """(pred, truth) per image, each [H, W] int64: from [B, H, W] / [H, W] tensors, or from
    lists of [H_i, W_i] images (or [B_i, H_i, W_i] batches) whose sizes differ between items."""
    if isinstance(pred, (list, tuple)) or isinstance(truth, (list, tuple)):
        if not isinstance(pred, (list, tuple)) or not isinstance(truth, (list, tuple)) or len(pred) != len(truth):
            raise ValueError("pred and truth must both be tensors or both lists of one [H, W] image per item, "
                             "of equal length")
        pred = [image for item in pred for image in _as_labels(item, "pred")]  # [B, H, W] items: B images
        truth = [image for item in truth for image in _as_labels(item, "truth")]
        if len(pred) != len(truth):
            raise ValueError(f"pred holds {len(pred)} images and truth {len(truth)}")
    else:
        pred, truth = _as_labels(pred, "pred"), _as_labels(truth, "truth")
    for p, t in ((pred, truth),) if torch.is_tensor(pred) else zip(pred, truth):
        if p.shape != t.shape:
            raise ValueError(f"pred {tuple(p.shape)} and truth {tuple(t.shape)} differ in shape")
    return list(zip(pred, truth))


def _class_areas(pairs, num_classes, ignore_index):
    """Per class over (pred, truth) ``pairs``: intersection, predicted area, true area, each [C] float64."""
    pred = torch.cat([p.reshape(-1) for p, _ in pairs]) if pairs else torch.zeros(0, dtype=torch.long)
    truth = torch.cat([t.reshape(-1) for _, t in pairs]) if pairs else torch.zeros(0, dtype=torch.long)
    keep = torch.ones_like(truth, dtype=torch.bool) if ignore_index is None else truth != ignore_index
    pred, truth = pred[keep], truth[keep]
    for name, labels in (("pred", pred), ("truth", truth)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes}) (ignore_index={ignore_index})")
    return [torch.bincount(labels, minlength=num_classes).double() for labels in (truth[pred == truth], pred, truth)]


def _dice(intersection, predicted, true):
    return 2 * intersection / (predicted + true)


def _iou(intersection, predicted, true):
    return intersection / (predicted + true - intersection)


def _ndimage():
    """scipy.ndimage, which HD95 needs (the [train] extra installs scipy), or an ImportError saying so."""
    try:
        from scipy import ndimage
    except ImportError as error:
        raise ImportError("HD95 needs scipy: pip install scipy (or refmatch-kernels[train])") from error
    return ndimage


def _boundary(mask):
    ndimage = _ndimage()

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _holes(mask, ignored, components):
    """The components of ``ignored`` that ``mask`` encloses: none of their pixels touches a
    known pixel outside ``mask`` or the image's edge."""
    ndimage = _ndimage()

    outside = np.pad(~mask & ~ignored, 1, constant_values=True)
    unpadded = (slice(1, -1),) * ignored.ndim
    reaching_out = np.unique(components[ndimage.binary_dilation(outside)[unpadded] & ignored])
    return ignored & ~np.isin(components, reaching_out)


def _mostly_surrounded(mask, ignored, components, count):
    """Per component of ``ignored`` (index 1..count; [count + 1] bool): whether ``mask`` holds
    most of the known pixels that touch it (one stray pixel at its edge does not cut it out); a
    pixel between two holes counts for both."""
    padded, inner = np.pad(components, 1), (slice(1, -1),) * ignored.ndim
    pixels, holes = [], []
    for axis in range(ignored.ndim):
        for step in (-1, 1):
            neighbour = np.roll(padded, step, axis=axis)[inner]  # the padding's zeros wrap around
            touching = ~ignored & (neighbour > 0)
            pixels.append(np.flatnonzero(touching))
            holes.append(neighbour[touching])
    pixel, hole = np.unique(np.stack([np.concatenate(pixels), np.concatenate(holes)]), axis=1)  # pairs once
    inside = np.bincount(hole, weights=mask.ravel()[pixel], minlength=count + 1)
    return inside > np.bincount(hole, minlength=count + 1) / 2


def _known(pred_mask, truth_mask, ignored):
    """The two masks where the truth is unknown (``ignored``): a hole of ignored pixels in the
    truth's mask counts as inside the truth, and inside the prediction where the prediction holds
    most of the pixels around it, so it puts no boundary (at distance 0 in both) into either;
    other ignored pixels count as outside both (a prediction that misses the organ stays empty)."""
    ndimage = _ndimage()

    components, count = ndimage.label(ignored)
    pred_known, truth_known = pred_mask & ~ignored, truth_mask & ~ignored
    in_truth = _holes(truth_known, ignored, components)
    in_pred = in_truth & _mostly_surrounded(pred_known, ignored, components, count)[components]
    return pred_known | in_pred, truth_known | in_truth


def hd95(pred_mask, truth_mask, spacing=1.0, ignored=None):
    """95th percentile symmetric Hausdorff distance between the boundaries of two
    boolean masks [H, W] or volumes [Z, H, W] (see the module docstring for the conventions);
    ``spacing`` is a pixel size, a float or one per axis. ``ignored`` (the masks' shape) marks
    pixels of unknown truth: a hole of them in the truth's mask counts as inside it, and inside
    the prediction where that holds most of the pixels around it; other ignored pixels count as
    outside both."""
    ndimage = _ndimage()

    pred_mask, truth_mask = np.asarray(pred_mask, dtype=bool), np.asarray(truth_mask, dtype=bool)
    if not np.all(np.isfinite(spacing)) or np.any(np.asarray(spacing) <= 0):
        raise ValueError(f"spacing must be positive and finite (a pixel size), got {spacing!r}")
    if pred_mask.shape != truth_mask.shape:
        raise ValueError(f"pred_mask {pred_mask.shape} and truth_mask {truth_mask.shape} differ in shape")
    if ignored is not None:
        ignored = np.asarray(ignored, dtype=bool)
        if ignored.shape != truth_mask.shape:
            raise ValueError(f"ignored {ignored.shape} and the masks {truth_mask.shape} differ in shape")
        pred_mask, truth_mask = _known(pred_mask, truth_mask, ignored)
    if not pred_mask.any() and not truth_mask.any():
        return 0.0
    if not pred_mask.any() or not truth_mask.any():
        return math.inf
    pred_edge, truth_edge = _boundary(pred_mask), _boundary(truth_mask)
    to_truth = ndimage.distance_transform_edt(~truth_edge, sampling=spacing)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)[truth_edge]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _nanmean(values):
    values = [value for value in values if not math.isnan(value)]
    return sum(values) / len(values) if values else math.nan


def segmentation_metrics(pred, truth, num_classes, class_names=None, ignore_index=None):
    """Dice, IoU and HD95 of int labels pred, truth [B, H, W] or [H, W], or lists of
    [H_i, W_i] images (sizes may differ between images, e.g. at each file's own size), in
    classes 0..num_classes-1 named by ``class_names`` (default "0", "1", ...); pixels whose
    truth is ``ignore_index`` count for no class, in either.

    Returns plain floats: {"dice": {name: v}, "iou": {...}, "hd95": {...}, "hd95_finite": {...},
    "hd95_inf_images": {name: int}, "mean_dice", "mean_iou", "mean_hd95", "mean_hd95_finite"}.
    Dice and IoU pool the set; HD95 is the mean over images of a class, skipping images where
    the class is absent from both (NaN when it is absent everywhere); ignored pixels as
    ``hd95`` takes them (a hole of them in an organ adds no boundary, other ignored pixels
    count for no class). One image where only the prediction or only the truth holds a class
    makes its HD95 inf; "hd95_finite" is the mean over the other images (NaN if none) and
    "hd95_inf_images" counts those images, so that a class a few images lack still reads.
    Means are over the foreground classes 1..C-1, skipping NaN.

    Images are 2-D: a volume [Z, H, W] passed here counts as Z images (Dice, pooled, is the
    same; HD95 becomes a mean over slices). For a volume's HD95 call ``hd95`` on its masks.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background plus a foreground class), got {num_classes}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index={ignore_index} is one of the classes [0, {num_classes}): "
                         "mark unknown pixels with a label outside them (the recipes use 255)")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class_names for {num_classes} classes")
    pairs = _image_pairs(pred, truth)
    areas = _class_areas(pairs, num_classes, ignore_index)
    dice, iou = _dice(*areas).tolist(), _iou(*areas).tolist()
    pairs = [(p.numpy(), t.numpy()) for p, t in pairs]
    unknown = [None if ignore_index is None or not (t == ignore_index).any() else t == ignore_index
               for _, t in pairs]  # once per image, None where no pixel is ignored
    distance, finite_distance, infinite = [], [], []
    for c in range(num_classes):
        per_image = [hd95(p == c, t == c, ignored=u) for (p, t), u in zip(pairs, unknown)
                     if (p == c if u is None else (p == c) & ~u).any() or (t == c).any()]
        finite = [value for value in per_image if value != math.inf]
        distance.append(float(np.mean(per_image)) if per_image else math.nan)
        finite_distance.append(float(np.mean(finite)) if finite else math.nan)
        infinite.append(len(per_image) - len(finite))
    result = {"dice": dict(zip(names, dice)), "iou": dict(zip(names, iou)), "hd95": dict(zip(names, distance)),
              "hd95_finite": dict(zip(names, finite_distance)), "hd95_inf_images": dict(zip(names, infinite))}
    for key, values in (("dice", dice), ("iou", iou), ("hd95", distance), ("hd95_finite", finite_distance)):
        result[f"mean_{key}"] = _nanmean(values[1:])
    return result
