"""Transformer tokens as feature maps: a ViT block's [B, T, D] output for ``FeatureTap``,
``ReferenceBank`` and ``PseudoLabeler``, which take [B, D, h, w] maps."""
from typing import Optional

import torch

from .arguments import describe
from .sizes import Sides, sides, spatial_size

MAX_LEADING_TOKENS = 16  # a class token and up to 15 registers (DINOv2 with registers: 1 + 4)
GRID_ADVICE = "pass grid=(image height // patch size, image width // patch size)"


def tokens_as_maps(tokens: torch.Tensor, grid: Optional[Sides] = None) -> torch.Tensor:
    """[B, T, D] tokens of an h x w patch grid -> [B, D, h, w] maps (a view, no copy).

    The last h * w tokens are the patches in raster order, as ViTs (DINO, DINOv2, SAM's image
    encoder flattened) keep them; those before (a class token, register tokens: at most
    ``MAX_LEADING_TOKENS``) are dropped.
    The grid cannot be read off T: 1 + 16 x 16 tokens and 1 + 15 x 17 are both 257.

    Args:
        tokens: [B, T, D], T >= h * w.
        grid: (h, w) of the patch grid, (image height // patch, image width // patch), or an
            int for a square one; needed (None is refused with that advice).

    Example:
        >>> tap = refmatch.FeatureTap(vit, ["blocks.11"],      # 224 x 224 images, patch 14
        ...                           to_maps={"blocks.11": lambda x: refmatch.tokens_as_maps(x, (16, 16))})
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        maps = isinstance(tokens, torch.Tensor) and tokens.dim() == 4
        raise ValueError(f"tokens must be [B, T, D], got {describe(tokens)}"
                         + ("; [B, D, h, w] maps need no reshaping" if maps else ""))
    if grid is None:
        raise ValueError(f"grid=(h, w) is needed, the patch grid: {GRID_ADVICE}")
    count = tokens.shape[1]
    try:
        height, width = sides(spatial_size(grid, "grid"), 2, "grid")
    except ValueError:
        raise ValueError(f"grid must be a positive int or an (h, w) pair of them, got {grid!r}") from None
    if height * width > count:
        raise ValueError(f"a {height}x{width} patch grid needs {height * width} tokens, got {count}: {GRID_ADVICE}")
    if count - height * width > MAX_LEADING_TOKENS:  # a wrong grid, whose patches would be scrambled
        raise ValueError(f"a {height}x{width} patch grid leaves {count - height * width} of {count} tokens before "
                         f"the patches, more than a class token and registers (at most {MAX_LEADING_TOKENS}): "
                         f"{GRID_ADVICE}")
    return tokens[:, count - height * width:].transpose(1, 2).unflatten(2, (height, width))
