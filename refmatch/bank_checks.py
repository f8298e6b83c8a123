"""Input checks of ReferenceBank that go beyond a shape: tensors that hold values, the images
kept for ``refresh``, and a state_dict that fits the bank. Each raises (or reports) before the
bank changes, so a refused call or load leaves it as it was."""
import torch

from .ops import describe


def require_values(**tensors):
    """Raise for a meta tensor among ``tensors`` (name=tensor): which rows a bank keeps and
    matches depends on values, which meta tensors lack."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            raise ValueError(f"{name} is a meta tensor: a ReferenceBank needs tensors that hold values (what it "
                             "stores and matches depends on them); refmatch.match and classwise_max take meta "
                             "tensors to infer result shapes")


def check_feature_maps(features, dim):
    """``add``'s features: [B, D, h, w] with the bank's D and h, w >= 1."""
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"features must be [B, D, h, w], got {describe(features)}")
    if not features.dtype.is_floating_point:
        raise TypeError(f"features must be floating point, as match's query, got {features.dtype}")
    if features.shape[1] != dim:
        raise ValueError(f"features have D={features.shape[1]} channels, the bank holds D={dim}")
    if 0 in features.shape[2:]:
        raise ValueError(f"features must have h, w >= 1 (a pixel per feature row), got {describe(features)}")


def check_images(images, batch):
    """``add``'s images, kept for ``refresh``: None or a tensor with one entry per feature map."""
    if images is not None and (not isinstance(images, torch.Tensor) or images.dim() < 1
                               or images.shape[0] != batch):
        raise ValueError(f"images must be None or a tensor of B={batch} inputs [B, ...] (what refresh re-embeds), "
                         f"got {describe(images)}")


def state_dict_problem(bank, state_dict, prefix):
    """Why ``state_dict`` cannot load into ``bank`` (a growable bank's slot layout and counts,
    every buffer's shape), or None. Checked before anything loads: torch skips only a buffer
    of the wrong shape and would load the counts beside features it left out."""
    saved_labels = state_dict.get(prefix + "labels")
    if bank.capacity is not None and saved_labels is not None and not torch.equal(saved_labels.cpu(),
                                                                                   bank.labels.cpu()):
        return (f"{prefix}labels: from a bank made by from_tensors, or of another layout; this bank groups its "
                f"slots by class, {bank.capacity} per class")
    saved_counts = state_dict.get(prefix + "counts")
    if bank.capacity is not None and saved_counts is not None and not bool(
            ((saved_counts >= 0) & (saved_counts <= bank.capacity)).all()):
        return (f"{prefix}counts: {saved_counts.tolist()} stored features per class, but a class holds 0 to "
                f"{bank.capacity} in this bank")
    for name, buffer in bank.named_buffers(recurse=False):
        saved = state_dict.get(prefix + name)
        if isinstance(saved, torch.Tensor) and saved.shape != buffer.shape:
            return (f"{prefix}{name}: saved with shape {tuple(saved.shape)}, this bank's is {tuple(buffer.shape)} "
                    "(another dim, num_classes or capacity_per_class); nothing was loaded")
    return None
