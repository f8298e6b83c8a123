"""PseudoLabeler: reference-guided pseudo-labels from a ReferenceBank."""
import math
from typing import NamedTuple, Optional, Sequence, SupportsIndex, Union

import numpy as np
import torch
import torch.nn.functional as F

from .arguments import as_int, as_number, describe
from .bank import ReferenceBank
from .bank_checks import check_feature_maps
from .choices import check_choice
from .masks import holds_integers
from .sizes import Sides, given_size, linear_mode, sides, spatial_size
from .vote import best_class, checked_temperature, margin, vote

MODES = ("hard", "soft")


def check_mode(mode, k, names=("mode", "k")):
    """ValueError unless ``mode`` is one of MODES and ``k`` fits it (hard: the nearest
    reference, k = 1); ``names``: how the caller spells the two settings."""
    mode_name, k_name = names
    check_choice(mode_name, mode, MODES)
    if mode == "hard" and k != 1:
        raise ValueError(f"{mode_name}=hard takes the nearest reference ({k_name}=1), got {k_name}={k}; "
                         f"{mode_name}=soft votes over k > 1")


class PseudoLabels(NamedTuple):
    """labels: [B, H, W] ([B, Z, H, W] for volumes) int64, ignore_index where dropped; confidence:
    the same shape, float32; kept_fraction: 0-d float32 tensor, share of pixels not dropped (0 for
    an empty batch)."""

    labels: torch.Tensor
    confidence: torch.Tensor
    kept_fraction: torch.Tensor


class PseudoLabeler:
    """Labels every pixel of unlabelled feature maps from a ``ReferenceBank``.

    Args:
        bank: the ``ReferenceBank`` (or ``ShardedReferenceBank``) to match against.
        k: neighbours; "hard" mode takes k = 1 only.
        mode: "hard": the label of the nearest reference, brought to ``out_size`` by
            nearest (each output pixel reads the feature pixel under its centre); confidence
            is its similarity (minus the distance for l2).
            "soft": class-wise best scores (k = 1) or the k nearest references'
            similarity-weighted votes, a softmax over classes at ``temperature``,
            upsampled bilinearly (trilinearly for volumes) before the argmax; confidence is the margin
            between the two most probable classes. A class the bank holds no reference of is never
            labelled, and in soft mode has probability 0, so margins count it out (a bank of one
            class gives every pixel that class at confidence 1): fill every class first.
        threshold: pixels with confidence below it get ``ignore_index``; a float, or one per
            class ([C] sequence or tensor, indexed by the pixel's pseudo-label: a rare or
            hard class can keep pixels at a lower confidence than the background).
        temperature: softmax temperature of "soft" mode, in the bank metric's score units:
            the default 0.1 suits cosine similarities (in [-1, 1]); l2 scores are squared
            distances, whose gaps depend on the features' scale, so an l2 bank needs one
            of about that gap (at 0.1, typical distances make every vote one-hot).
        out_size: (H, W) of the labels ((Z, H, W) for volumes), or an int for every
            side; None keeps the feature resolution.
        ignore_index: label of dropped or unmatched pixels; None: the bank's ``ignore_index``
            where that is no class (masks marked -100, as ``F.cross_entropy``'s default), else 255.

    Example:
        >>> labeler = PseudoLabeler(bank, mode="soft", threshold=0.2, out_size=(256, 256))
        >>> labels, confidence, kept_fraction = labeler(teacher_features)   # [B, 256, 256] twice, a 0-d share
        >>> loss = F.cross_entropy(student_logits, labels, ignore_index=labeler.ignore_index)
    """

    def __init__(self, bank: ReferenceBank, k: SupportsIndex = 1, mode: str = "hard",
                 threshold: Union[None, float, Sequence[float], np.ndarray, torch.Tensor] = None,
                 temperature: float = 0.1, out_size: Optional[Sides] = None,
                 ignore_index: Optional[SupportsIndex] = None):
        if not all(hasattr(bank, name) for name in ("match", "classwise_max", "num_classes", "metric")):
            raise TypeError(f"bank must be a ReferenceBank (or ShardedReferenceBank), got {type(bank).__name__}")
        k, ignore_index = as_int("k", k), as_int("ignore_index", ignore_index, optional=True)
        if ignore_index is None:  # the bank's, so that one loss's ignore_index covers masks and pseudo-labels
            own = getattr(bank, "ignore_index", None)
            ignore_index = own if own is not None and not 0 <= own < bank.num_classes else 255
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        check_mode(mode, k)
        temperature = checked_temperature(temperature)
        threshold = _checked_threshold(threshold, mode, bank)
        if 0 <= ignore_index < bank.num_classes:
            raise ValueError(f"ignore_index={ignore_index} is one of the bank's classes 0..{bank.num_classes - 1}: "
                             "dropped pixels would read as that class")
        self.bank, self.k, self.mode, self.threshold, self._per_class = bank, k, mode, threshold, None
        self.temperature, self.ignore_index = temperature, ignore_index
        self.out_size = spatial_size(out_size, "out_size")

    def __repr__(self):  # the bank by type: its length is a collective for a sharded bank
        return (f"PseudoLabeler({type(self.bank).__name__}, mode={self.mode!r}, k={self.k}, "
                f"threshold={self.threshold}, temperature={self.temperature}, out_size={given_size(self.out_size)}, "
                f"ignore_index={self.ignore_index})")

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, agree_with: Optional[torch.Tensor] = None) -> PseudoLabels:
        """features [B, D, h, w] -> PseudoLabels at ``out_size`` (or h x w); [B, D, z, h, w]
        volumes -> labels [B, Z, H, W] (nearest, or trilinear probabilities in soft mode).

        agree_with: optional [B, H, W] ([B, Z, H, W]) labels at that size (a teacher's argmax,
        say); pixels whose pseudo-label differs get ``ignore_index``.
        """
        spatial, size, maps = self._shapes(features)
        if self.mode == "hard":
            result = self.bank.match(maps, k=1)
            sign = -1.0 if self.bank.metric == "l2" else 1.0
            labels = _resize_nearest(result.label.reshape(features.shape[0], *spatial), size)
            confidence = _resize_nearest(sign * result.score.float().reshape(features.shape[0], *spatial), size)
            labels = torch.where(labels < 0, self.ignore_index, labels)
        else:
            probabilities = self._soft_probabilities(maps, spatial, size)
            labels, confidence = best_class(probabilities), margin(probabilities)
            labels = torch.where(probabilities.sum(dim=1) > 0, labels, self.ignore_index)
        if self.threshold is not None:
            labels = torch.where(confidence < self._threshold_of(labels), self.ignore_index, labels)
        if agree_with is not None:
            # Checked after the bank's call: on a sharded bank, a rank raising before it
            # would leave the other ranks waiting in its collectives.
            _check_agreement_labels(agree_with, (features.shape[0], *size), labels.device)
            labels = torch.where(labels == agree_with, labels, self.ignore_index)
        return PseudoLabels(labels, confidence, kept_fraction(labels, self.ignore_index))

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Soft mode's class distribution of ``features`` (the tapped [B, D, h, w], or
        [B, D, z, h, w]), float32 [B, C, H, W] at ``out_size`` ([B, C, Z, H, W] for volumes):
        soft targets for a KL or soft cross-entropy loss, where ``__call__`` gives their argmax.
        Zero over C where no reference voted; ``threshold`` and ``agree_with`` do not apply.
        Hard mode has none (ValueError)."""
        if self.mode != "soft":
            raise ValueError("probabilities are soft mode's: build the PseudoLabeler with mode='soft'")
        spatial, size, maps = self._shapes(features)
        return self._soft_probabilities(maps, spatial, size)

    def _threshold_of(self, labels):
        """The threshold: a float, or each pixel's class's ([*labels.shape] float32)."""
        if isinstance(self.threshold, float):
            return self.threshold
        if self._per_class is None or self._per_class.device != labels.device:  # copied once per device
            self._per_class = torch.tensor(self.threshold, dtype=torch.float32, device=labels.device)
        return self._per_class[labels.clamp(0, len(self.threshold) - 1)]  # ignore_index pixels are dropped anyway

    def _shapes(self, features):
        """(the features' spatial sides, the labels' size, the features as maps: volumes flattened).
        Checked on every rank of a sharded bank at once: a rank raising alone would leave the
        others waiting in the bank's collectives."""
        def checked():
            check_feature_maps(features, self.bank.dim)
            spatial = tuple(features.shape[2:])
            return spatial, sides(self.out_size, len(spatial), "out_size") if self.out_size else spatial
        spatial, size = self.bank._on_every_rank(checked)
        return spatial, size, features.flatten(2, 3) if len(spatial) == 3 else features  # volumes: (z*h, w)

    def _soft_probabilities(self, maps, spatial, size):
        scores = self.bank.classwise_max(maps) if self.k == 1 else self.bank.match(maps, k=self.k)
        probabilities = vote(scores, num_classes=self.bank.num_classes, weighting="similarity",
                             temperature=self.temperature, metric=self.bank.metric).probabilities
        probabilities = probabilities.reshape(*probabilities.shape[:2], *spatial)
        if tuple(probabilities.shape[2:]) == size:
            return probabilities
        return F.interpolate(probabilities, size=size, mode=linear_mode(len(size)), align_corners=False)


def kept_fraction(labels, ignore_index):
    """0-d float32 share of ``labels`` (any shape) other than ``ignore_index``; 0 for no labels (a mean of
    nothing is NaN, which would spoil the averages of a training log)."""
    kept = (labels != ignore_index).sum().double()  # counts exact past float32's 2^24
    return (kept / labels.numel() if labels.numel() else kept).float()


def _checked_threshold(threshold, mode, bank):
    """None, a float, or a tuple of ``bank.num_classes`` floats; ValueError for NaN, a wrong
    count, or a threshold above every confidence ``mode`` gives on the bank's metric, which
    would drop every pixel (of its class): soft margins and cosines are at most 1, hard l2
    confidences (minus a squared distance) at most 0."""
    if threshold is None:
        return None
    per_class = isinstance(threshold, (list, tuple)) or getattr(threshold, "ndim", 0) == 1  # tensors, NumPy arrays
    if per_class and len(threshold) != bank.num_classes:
        raise ValueError(f"threshold must be a number or one per class ({bank.num_classes} for this bank), "
                         f"got {len(threshold)} values")
    names = [f"threshold[{c}]" for c in range(len(threshold))] if per_class else ["threshold"]
    values = [as_number(name, value) for name, value in zip(names, threshold if per_class else [threshold])]
    for name, value in zip(names, values):
        if math.isnan(value):
            raise ValueError(f"{name} must be a number{'' if per_class else ' or None'}, got nan")
        _check_threshold_can_keep(name, value, mode, bank.metric, per_class)
    return tuple(values) if per_class else values[0]


def _check_threshold_can_keep(name, threshold, mode, metric, per_class):
    """ValueError for a ``threshold`` (called ``name``; one class's if ``per_class``) above every
    confidence ``mode`` gives on a ``metric`` bank."""
    if mode == "hard" and metric == "dot":
        return
    if mode == "soft":
        highest, what = 1.0, "soft mode's confidence, the margin between the two most probable classes, lies in [0, 1]"
    elif metric == "cosine":
        highest, what = 1.0, "hard mode's confidence on a cosine bank, the nearest similarity, lies in [-1, 1]"
    else:
        highest, what = 0.0, ("hard mode's confidence on an l2 bank is minus the squared distance to the nearest "
                              "reference (<= 0): threshold=-d keeps the pixels within squared distance d")
    if threshold > highest:
        raise ValueError(f"{name}={threshold} would keep no pixel" + (" of its class" if per_class else "")
                         + f": {what}")


def _check_agreement_labels(agree_with, expected, device):
    if not isinstance(agree_with, torch.Tensor) or tuple(agree_with.shape) != expected:
        channels = isinstance(agree_with, torch.Tensor) and agree_with.dim() == len(expected) + 1 and \
            (agree_with.shape[0], *agree_with.shape[2:]) == expected
        axes = ("B, H, W", "B, Z, H, W")[len(expected) - 3]
        as_long = "" if not channels or holds_integers(agree_with) else ".long()"  # AsDiscrete gives float32
        hint = ("" if not channels else
                f"; for labels with a channel axis of one (MONAI's AsDiscrete(argmax=True)) pass "
                f"agree_with[:, 0]{as_long}" if agree_with.shape[1] == 1 else
                f"; for [{axes.replace('B', 'B, C', 1)}] logits pass their .argmax(1)")
        raise ValueError(f"agree_with must be labels of shape [{axes}] = {list(expected)}, got "
                         f"{describe(agree_with)}{hint}")
    if not holds_integers(agree_with):
        raise TypeError(f"agree_with must hold integer labels (a teacher's argmax), got {agree_with.dtype}: pass "
                        "agree_with.long() if its values are class indices")
    if agree_with.device != device:
        raise ValueError(f"agree_with is on {agree_with.device}, the pseudo-labels on {device} (the features' "
                         "device): move it there")


def _resize_nearest(maps, size):
    """[B, *sides] labels or scores to [B, *size] by nearest, read where each output pixel's
    centre falls (torch's "nearest" reads where its corner falls: a pixel early in places where
    the factor is not an integer)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(maps.dtype)
