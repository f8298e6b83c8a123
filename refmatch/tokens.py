"""Transformer tokens as feature maps: a ViT block's [B, T, D] output for ``FeatureTap``,
``ReferenceBank`` and ``PseudoLabeler``, which take [B, D, h, w] maps."""
import math
from typing import Optional

import torch

from .arguments import describe
from .sizes import Sides, sides, spatial_size


def tokens_as_maps(tokens: torch.Tensor, grid: Optional[Sides] = None) -> torch.Tensor:
    """[B, T, D] tokens of a patch grid -> [B, D, h, w] maps (a view, no copy).

    The last h * w tokens are the patches in raster order, as ViTs (DINO, DINOv2, SAM's image
    encoder flattened) keep them; those before (a class token, register tokens) are dropped.

    Args:
        tokens: [B, T, D], T >= h * w.
        grid: (h, w) of the patch grid, e.g. (image_height // patch, image_width // patch);
            None: a square one, h = w = isqrt(T) (257 tokens: 16 x 16 after a class token),
            which holds while fewer than 2 h + 1 tokens come before the patches.

    Example:
        >>> tap = refmatch.FeatureTap(vit, ["blocks.11"], to_maps={"blocks.11": refmatch.tokens_as_maps})
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        maps = isinstance(tokens, torch.Tensor) and tokens.dim() == 4
        raise ValueError(f"tokens must be [B, T, D], got {describe(tokens)}"
                         + ("; [B, D, h, w] maps need no reshaping" if maps else ""))
    count = tokens.shape[1]
    height, width = (math.isqrt(count),) * 2 if grid is None else sides(spatial_size(grid, "grid"), 2, "grid")
    if height * width > count or height * width == 0:
        raise ValueError(f"a {height}x{width} patch grid needs {height * width} tokens, got {count}: pass "
                         "grid=(image height // patch size, image width // patch size)")
    return tokens[:, count - height * width:].transpose(1, 2).unflatten(2, (height, width))
