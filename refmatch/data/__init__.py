"""Data for the training recipe: folder datasets of PNGs, synthetic chest
phantoms (the default without data) and seeded, saved splits."""
from .folder import FolderDataset, png_names, read_image, read_mask, scan_folder
from .phantoms import CLASS_NAMES, PhantomDataset, make_phantom
from .splits import load_splits, make_splits, save_splits

__all__ = ["CLASS_NAMES", "FolderDataset", "PhantomDataset", "load_splits", "make_phantom", "make_splits",
           "png_names", "read_image", "read_mask", "save_splits", "scan_folder"]
