"""Where each method's pseudo-labels come from.

``meanteacher-pl``: the EMA teacher's own confident predictions (the baseline the
paper argues against). ``refmatch``: the label of the most similar labelled pixel
in the teacher's feature space, via ``ReferenceBank`` + ``PseudoLabeler``; with
``pl_consensus`` only where the teacher's own argmax agrees (the other pixels are
ignored, not relabelled).
"""
import torch

from ..bank import ReferenceBank
from ..data.folder import IGNORE_LABEL
from ..feature_tap import FeatureTap
from ..pseudo_labels import PseudoLabeler, PseudoLabels

IGNORE = IGNORE_LABEL  # a mask's ignored pixels and a dropped pseudo-label: the losses skip both


class TeacherPredictions:
    """Argmax of the teacher's softmax, kept where its probability reaches ``threshold``."""

    def __init__(self, teacher, threshold):
        self.teacher, self.threshold = teacher, threshold

    @torch.no_grad()
    def __call__(self, images):
        probabilities = self.teacher(images).float().softmax(dim=1)
        confidence, labels = probabilities.max(dim=1)
        labels = torch.where(confidence >= self.threshold, labels, IGNORE)
        return PseudoLabels(labels, confidence, (labels != IGNORE).float().mean())

    def refresh(self, images, masks, batch_size):
        """Nothing to refresh: predictions follow the teacher by construction."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ReferencePseudoLabels:
    """Pseudo-labels by matching teacher features against a bank of labelled pixels."""

    def __init__(self, teacher, config, num_classes, device):
        self.teacher = teacher
        self.tap = FeatureTap(teacher, config.tap_layers, size=config.tap_size)
        dim = sum(teacher.decoder_channels(name) for name in config.tap_layers)
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        # Each refresh adds every labelled image in the same order: a ring bank would keep the last
        # ones only, whenever a class has more pixels than bank_capacity.
        self.bank = ReferenceBank(dim, num_classes, config.bank_capacity, dtype=dtype, metric="cosine",
                                  ignore_index=IGNORE, policy=config.bank_policy, seed=config.seed).to(device)
        self.labeler = PseudoLabeler(self.bank, k=config.pl_k, mode=config.pl_mode,
                                     threshold=config.pl_threshold or None, temperature=config.pl_temperature,
                                     out_size=(config.image_size, config.image_size), ignore_index=IGNORE)
        self.consensus = config.pl_consensus

    @torch.no_grad()
    def refresh(self, images, masks, batch_size):
        """Rebuild the bank from the current teacher's features of all labelled images."""
        self.bank.clear()
        for start in range(0, images.shape[0], batch_size):
            self.teacher(images[start:start + batch_size])
            self.bank.add(self.tap.features().float(), masks[start:start + batch_size])

    @torch.no_grad()
    def __call__(self, images):
        logits = self.teacher(images)
        return self.labeler(self.tap.features().float(), logits.argmax(dim=1) if self.consensus else None)

    def state_dict(self):
        return self.bank.state_dict()

    def load_state_dict(self, state):
        self.bank.load_state_dict(state)


def pseudo_label_source(method, teacher, config, num_classes, device):
    """The pseudo-label producer of ``method``, or None for ``supervised``."""
    if method == "meanteacher-pl":
        return TeacherPredictions(teacher, config.confidence_threshold)
    if method == "refmatch":
        return ReferencePseudoLabels(teacher, config, num_classes, device)
    return None
