"""Argument checks the public ops share: integers, numbers, label dtypes and values, and the
hints their errors give for a mixed-up layout."""
import numbers
import operator

import torch

from .backends.scoring import host_read_allowed
from .masks import label_is


def _scalar_tensor(value):
    return isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool


def as_int(name, value, optional=False):
    """``value`` as a Python int (NumPy and 0-d tensor integers too), or a TypeError
    naming ``name``; bools, floats and larger tensors are refused, None only when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, torch.Tensor):
        integral = _scalar_tensor(value) and not (value.dtype.is_floating_point or value.dtype.is_complex)
    else:
        integral = not isinstance(value, bool)
    if integral:
        try:
            return operator.index(value)
        except TypeError:
            pass
    kind = "an int or None" if optional else "an int"
    raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")


def as_number(name, value):
    """``value`` as a Python float (a real number or a real 0-d tensor), or a TypeError
    naming ``name``; bools are refused."""
    if isinstance(value, torch.Tensor):
        real = _scalar_tensor(value) and not value.dtype.is_complex
    else:
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if real:
        return float(value)
    raise TypeError(f"{name} must be a number, got {type(value).__name__}")


# uint16, uint32 and uint64 lack the CPU kernels the label checks need (aminmax).
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_integer_labels(labels):
    """TypeError unless ``labels`` has one of the integer dtypes torch computes with
    (bool and floats are not labels)."""
    if labels.dtype not in _LABEL_DTYPES:
        names = ", ".join(str(dtype).replace("torch.", "") for dtype in _LABEL_DTYPES)
        unsigned = labels.dtype in (torch.uint16, torch.uint32, torch.uint64)
        raise TypeError(f"labels must have an integer dtype ({names}), got {labels.dtype}"
                        + ("; .long() converts them" if unsigned else ""))


def kept_labels(labels, ignore_index):
    """The labels that are not ``ignore_index``."""
    return labels if ignore_index is None else labels[~label_is(labels, ignore_index)]


# A bank keeps a slot and a counter per class: a stray label (uninitialised memory, an
# ignore value other than ignore_index) inferred as 2^40 classes would fail to allocate.
MAX_INFERRED_CLASSES = 1 << 16


def inferred_num_classes(labels, ignore_index):
    """C for ``labels`` [M]: the largest label other than ``ignore_index``, plus 1, at most
    ``MAX_INFERRED_CLASSES`` (a larger C must be passed)."""
    kept = kept_labels(labels, ignore_index)
    if kept.numel() == 0:
        raise ValueError(f"num_classes=None is inferred from the labels, but none of the {labels.numel()} labels "
                         f"differs from ignore_index={ignore_index}; pass num_classes")
    largest = int(kept.max())
    if largest >= MAX_INFERRED_CLASSES:
        raise ValueError(f"num_classes=None is inferred from the labels, but one label is {largest} (ignore_index="
                         f"{ignore_index}): pass the ignore_index that label means, or num_classes if the classes "
                         "are that many")
    return max(largest, 0) + 1  # negative labels fail the label check, not num_classes'


def describe(value):
    """How an argument looks in an error message: its shape, else its type."""
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def channels_last_hint(maps, dim):
    """For an error about ``maps``' channels: how to pass a [B, H, W, D] tensor (numpy's image
    layout) whose last axis has the expected ``dim``, or "" where that cannot be the mix-up. A
    map whose width merely equals ``dim`` looks the same: the hint says "if"."""
    if maps.dim() == 4 and maps.shape[1] != dim and maps.shape[-1] == dim:
        return "; if it is [B, H, W, D] (NumPy's image layout), .permute(0, 3, 1, 2) passes it as a view"
    if maps.dim() == 5 and maps.shape[1] != dim and dim in maps.shape[2:]:
        axis = 2 + maps.shape[2:].index(dim)
        order = ", ".join(map(str, [0, axis] + [a for a in range(1, 5) if a != axis]))
        return f"; if the channels are axis {axis}, .permute({order}) passes the volume as [B, D, Z, H, W]"
    return ""


def volume_hint(query):
    """For an error about a query's rank: how a [B, D, Z, H, W] volume goes in, or ""."""
    if isinstance(query, torch.Tensor) and query.dim() == 5:
        return ("; a volume [B, D, Z, H, W] goes in as volume.flatten(2, 3), its results come back with "
                ".unflatten(-2, (Z, H))")
    return ""


def check_label_values(labels, ignore_index, num_classes=None):
    """Labels are >= 0 (or ignore_index) and below num_classes.

    One host read of the label range. Skipped under torch.compile and CUDA graph
    capture, where a host read is not allowed; the checks then stay the caller's.
    """
    if not host_read_allowed(labels):
        return
    kept = kept_labels(labels, ignore_index)
    if kept.numel() == 0:
        return
    lowest, highest = (int(value) for value in kept.aminmax())
    allowed = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
    if lowest < 0:
        raise ValueError(f"labels must be >= 0{allowed}, got {lowest}")
    if num_classes is not None and highest >= num_classes:
        hint = (f": pass num_classes={highest + 1}, or ignore_index={highest} if that label marks pixels of no class"
                if ignore_index is None else f": pass num_classes={highest + 1}")
        raise ValueError(f"labels must be < num_classes={num_classes}{allowed}, got {highest}{hint}")
