"""Checkpoints written atomically: a kill mid-save leaves the previous file intact."""
from pathlib import Path

import torch

from ..atomic_file import write_atomic


def save_atomic(state, path):
    """torch.save ``state`` to ``path`` through ``write_atomic``."""
    write_atomic(path, lambda file: torch.save(state, file))


def load(path, device="cpu"):
    """A checkpoint dict; raises FileNotFoundError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=device, weights_only=False)
