"""Augmentations in plain torch, drawn from an explicit generator (so resume is exact).

``weak`` is geometric plus mild intensity jitter and moves masks with the
image. ``strong`` is photometric only, so a strong view stays pixel-aligned with
the pseudo-labels computed on its weak view.
"""
import math

import torch
import torch.nn.functional as F


def _uniform(generator, count, low, high):
    return low + (high - low) * torch.rand(count, generator=generator)


def weak(images, masks, generator, max_degrees=10.0, scale=(0.9, 1.1), shift=0.05, outside=0):
    """Random rotation, scale and shift, then brightness/contrast jitter.

    Args:
        images: [B, C, H, W] in [0, 1]; masks: [B, H, W] labels, or None.
        generator: the torch.Generator every draw comes from (the run's, saved with it).
        outside: the label of mask pixels moved in from outside the image (whose image
            value is 0): 0, background, for training masks; unknown for hidden truth
            that only scores pseudo-labels, so the padding is not scored.
    Returns:
        (images, masks) transformed alike (masks by nearest).
    """
    batch = images.shape[0]
    angle = _uniform(generator, batch, -max_degrees, max_degrees) * math.pi / 180
    zoom = _uniform(generator, batch, *scale)
    offset = _uniform(generator, 2 * batch, -2 * shift, 2 * shift).view(batch, 2)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        moved = F.grid_sample((masks[:, None] - outside).float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)
        masks = moved[:, 0].long() + outside
    gain = _uniform(generator, batch, 0.9, 1.1).view(-1, 1, 1, 1).to(images)
    bias = _uniform(generator, batch, -0.05, 0.05).view(-1, 1, 1, 1).to(images)
    return (images * gain + bias).clamp(0, 1), masks


def strong(images, generator):
    """Gamma, contrast, brightness, blur and noise: [B, C, H, W] -> same shape, drawn from ``generator``."""
    batch = images.shape[0]
    gamma = torch.exp(_uniform(generator, batch, -0.4, 0.4)).view(-1, 1, 1, 1).to(images)
    contrast = _uniform(generator, batch, 0.6, 1.4).view(-1, 1, 1, 1).to(images)
    brightness = _uniform(generator, batch, -0.15, 0.15).view(-1, 1, 1, 1).to(images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = ((images.clamp(0, 1) ** gamma - mean) * contrast + mean + brightness)
    blur = (torch.rand(batch, generator=generator) < 0.5).view(-1, 1, 1, 1).to(images)
    kernel = torch.tensor([1.0, 2.0, 1.0], device=images.device) / 4
    kernel2d = (kernel[:, None] * kernel[None, :]).expand(images.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel2d, groups=images.shape[1])
    out = blur * blurred + (1 - blur) * out
    noise = torch.randn(images.shape, generator=generator).to(images) * _uniform(generator, batch, 0, 0.05).view(
        -1, 1, 1, 1).to(images)
    return (out + noise).clamp(0, 1)
