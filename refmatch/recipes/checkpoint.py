"""Checkpoints written atomically: a kill mid-save leaves the previous file intact."""
import pickle
from pathlib import Path

import torch

from ..atomic_file import write_atomic


def save_atomic(state, path):
    """torch.save ``state`` to ``path`` through ``write_atomic``."""
    write_atomic(path, lambda file: torch.save(state, file))


def load(path, device="cpu"):
    """A checkpoint dict; raises FileNotFoundError, or ValueError for a damaged file, naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except torch.OutOfMemoryError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a readable checkpoint (damaged or not written by refmatch): "
                         f"{' '.join(str(error).split())[:200]}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a refmatch checkpoint: it holds a {type(state).__name__}")
    return state
