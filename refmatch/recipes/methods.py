"""Where each method's pseudo-labels come from.

``meanteacher-pl``: the EMA teacher's own confident predictions (the baseline the
paper argues against). ``refmatch``: the label of the most similar labelled pixel
in the teacher's feature space, via ``ReferenceBank`` + ``PseudoLabeler``; with
``pl_consensus`` only where the teacher's own argmax agrees (the other pixels are
ignored, not relabelled).
"""
import math

import torch

from ..bank import ReferenceBank
from ..data.folder import IGNORE_LABEL
from ..feature_tap import FeatureTap
from ..masks import downsample_masks
from ..pseudo_labels import PseudoLabeler, PseudoLabels, kept_fraction
from ..vote import best_class
from .progress import progress_bar

IGNORE = IGNORE_LABEL  # a mask's ignored pixels and a dropped pseudo-label: the losses skip both


class TeacherPredictions:
    """Argmax of the teacher's softmax, kept where its probability reaches ``threshold``."""

    def __init__(self, teacher, threshold):
        self.teacher, self.threshold = teacher, threshold

    @torch.no_grad()
    def __call__(self, images):
        """images [B, C, H, W] -> PseudoLabels [B, H, W]: the teacher's argmax where confident enough."""
        probabilities = self.teacher(images).float().softmax(dim=1)
        confidence, labels = probabilities.max(dim=1)
        labels = torch.where(confidence >= self.threshold, labels, IGNORE)
        return PseudoLabels(labels, confidence, kept_fraction(labels, IGNORE))

    def refresh(self, images, masks, batch_size):
        """Nothing to refresh: predictions follow the teacher by construction."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def labeler_threshold(pl_threshold):
    """The config's ``pl_threshold`` as PseudoLabeler's ``threshold``: 0 keeps every pseudo-label
    (None; for a list, that class's -inf), as hard labels with a negative similarity too."""
    if isinstance(pl_threshold, list):
        return [value or -math.inf for value in pl_threshold]
    return pl_threshold or None


class ReferencePseudoLabels:
    """Pseudo-labels by matching teacher features against a bank of labelled pixels."""

    def __init__(self, teacher, config, num_classes, device):
        self.teacher = teacher
        self.tap = FeatureTap(teacher, config.tap_layers, size=config.tap_size)
        dim = sum(teacher.decoder_channels(name) for name in config.tap_layers)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        # bank_policy: each refresh adds every labelled image in the same order, so a ring bank keeps
        # the last ones only wherever a class has more pixels than bank_capacity (why reservoir is the default).
        self.bank = ReferenceBank(dim, num_classes, config.bank_capacity, dtype=dtype, metric="cosine",
                                  ignore_index=IGNORE, policy=config.bank_policy, seed=config.seed).to(device)
        self.labeler = PseudoLabeler(self.bank, k=config.pl_k, mode=config.pl_mode,
                                     threshold=labeler_threshold(config.pl_threshold),
                                     temperature=config.pl_temperature,
                                     out_size=(config.image_size, config.image_size), ignore_index=IGNORE)
        self.consensus = config.pl_consensus
        self.config = config

    @torch.no_grad()
    def refresh(self, images, masks, batch_size):
        """Rebuild the bank from the current teacher's features of all labelled images:
        images [L, 1, H, W], masks [L, H, W] int64, ``batch_size`` images a forward pass."""
        self.bank.clear()
        bar = progress_bar(images.shape[0], "reference bank", delay=2.0)
        for start in range(0, images.shape[0], batch_size):
            self.teacher(images[start:start + batch_size])
            self.bank.add(self.tap.features().float(), masks[start:start + batch_size])
            bar.update(images[start:start + batch_size].shape[0])
        bar.close()
        require_k_references(self.config, len(self.bank))  # rows holding NaN or Inf are not stored

    @torch.no_grad()
    def __call__(self, images):
        """images [B, C, H, W] -> PseudoLabels at [B, H, W] from the teacher's tapped features."""
        logits = self.teacher(images)
        return self.labeler(self.tap.features().float(), best_class(logits) if self.consensus else None)

    def state_dict(self):
        return self.bank.state_dict()

    def load_state_dict(self, state):
        self.bank.load_state_dict(state)


def check_pl_k(config, masks, num_classes, batch_size=16):
    """ValueError, before any training, when the bank that refmatch builds from the labelled
    ``masks`` [L, H, W] would hold fewer references than ``config.pl_k``: the votes would fail
    only once pseudo-labels start. Counts each class's pixels at the tap's resolution, as the
    bank's ``add`` does (majority downsampling, ``IGNORE`` dropped), at most bank_capacity each."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for start in range(0, masks.shape[0], batch_size):  # a few masks at a time: bounded memory at any dataset size
        labels = downsample_masks(masks[start:start + batch_size], (config.tap_size, config.tap_size),
                                  num_classes, IGNORE).flatten()
        counts += torch.bincount(labels[labels < num_classes].cpu(), minlength=num_classes)
    require_k_references(config, int(counts.clamp(max=config.bank_capacity).sum()))


def require_k_references(config, references):
    """ValueError when a bank of ``references`` rows cannot give ``config.pl_k`` neighbours."""
    if references == 0:
        raise ValueError(f"the labelled masks give the bank no pixel at tap_size={config.tap_size}: at that "
                         f"size every pixel of them is ignored ({IGNORE}); check masks/, or raise tap_size")
    if references < config.pl_k:
        raise ValueError(f"pl_k={config.pl_k} but the labelled images give the bank {references} pixels "
                         f"(tap_size={config.tap_size} squared per labelled image, at most "
                         f"bank_capacity={config.bank_capacity} per class): lower pl_k, or label more images")


def pseudo_label_source(method, teacher, config, num_classes, device):
    """The pseudo-label producer of ``method``, or None for ``supervised``."""
    if method == "meanteacher-pl":
        return TeacherPredictions(teacher, config.confidence_threshold)
    if method == "refmatch":
        return ReferencePseudoLabels(teacher, config, num_classes, device)
    return None
