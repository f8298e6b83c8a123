"""Spatial sizes as users give them (an int for every side, or one per side) and the resizing
mode that fits maps of 2 or 3 spatial dims."""
from typing import Sequence, SupportsIndex, Union

import numpy as np
import torch

from .arguments import as_int


def size_pair(size, name):
    """None, an int (a square) or an (H, W) pair of positive ints (NumPy and 0-d tensor
    integers too) -> None or (H, W) Python ints."""
    given = spatial_size(size, name)
    return None if given is None else sides(given, 2, name)


Sides = Union[SupportsIndex, Sequence[SupportsIndex], np.ndarray, torch.Tensor]  # a size: every side, or each


def spatial_size(size, name):
    """None, an int (every side) or a (h, w) / (z, h, w) tuple of positive ints (or a 1-D array or
    tensor of them, as MONAI's spatial_shape) -> None, (int,) for an int, or the tuple of Python
    ints; ``sides`` fits it to maps of 2 or 3 spatial dims."""
    if size is None:
        return None
    sequence = isinstance(size, (tuple, list)) or getattr(size, "ndim", 0) == 1
    given = tuple(size) if sequence else (size,)
    try:
        given = tuple(as_int(name, side) for side in given)
    except TypeError:
        given = ()
    if not 1 <= len(given) <= 3 or min(given) < 1 or (sequence and len(given) == 1):
        raise ValueError(f"{name} must be None, a positive int or an (h, w) or (z, h, w) tuple of positive ints, "
                         f"got {size!r}")
    return given


def given_size(size):
    """``spatial_size``'s result as it was given: None, an int or a tuple (for reprs)."""
    return size[0] if size is not None and len(size) == 1 else size


def sides(size, dims, name):
    """``spatial_size``'s result as ``dims`` sides (an int on every side), or a ValueError where a
    tuple gives another number of sides than the maps have."""
    if len(size) == 1:
        return size * dims
    if len(size) != dims:
        raise ValueError(f"{name}={size} gives {len(size)} sides, but the maps have {dims} spatial dims")
    return size


def linear_mode(dims):
    """``F.interpolate``'s linear mode for maps of ``dims`` (2 or 3) spatial dims."""
    return ("bilinear", "trilinear")[dims - 2]
