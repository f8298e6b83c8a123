"""Synthetic chest radiograph phantoms: the recipe's data on a machine without data.

Each phantom is a frontal (PA) chest radiograph drawn on a [-1, 1]^2 grid: a body
outline of soft tissue, two dark lung fields (tapered superellipses), a bright
mediastinum and spine, a heart, two clavicles, posterior ribs as periodic curved
bands, vessel texture, then a global contrast/gamma change, blur and noise.

Radiological convention: the patient's left is on the image's right, so the heart
bulges into the lower part of the image-right lung field.

Classes, and the priority where they overlap (the later wins): background <
lung < heart < clavicle. A lung pixel behind the heart is "heart"; a pixel under
a clavicle is "clavicle". Ribs are texture only, not a class.

Everything random comes from one ``numpy.random.Generator`` seeded per phantom,
so a phantom depends only on its seed, never on global RNG state.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

CLASS_NAMES = ("background", "lung", "heart", "clavicle")
LUNG, HEART, CLAVICLE = 1, 2, 3


def _soft(signed_distance, edge):
    """Smooth 0..1 inside indicator of a region where ``signed_distance`` > 0."""
    return torch.sigmoid(signed_distance / edge)


def _superellipse(x, y, cx, cy, ax, ay, power, taper=0.0):
    """1 - |u|^p - |v|^p: > 0 inside a superellipse whose half-width shrinks by
    ``taper`` from its bottom (v = 1) to its top (v = -1), like a lung apex."""
    v = (y - cy) / ay
    width = ax * (1.0 - taper * (1.0 - v.clamp(-1, 1)) / 2)
    return 1.0 - (x - cx).abs().div(width) ** power - v.abs() ** power


def _smooth_noise(rng, size, cells):
    """[size, size] zero-mean noise varying on a scale of size / cells pixels."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells), dtype=np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]


def _blur(image, sigma):
    """Separable Gaussian blur of a [H, W] tensor (sigma in pixels)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    padded = F.pad(image[None, None], (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, taps.view(1, 1, 1, -1))
    return F.conv2d(rows, taps.view(1, 1, -1, 1))[0, 0]


def _grid(rng, size):
    """Pixel-centre coordinates in [-1, 1] under a small random pose (rotation,
    scale, shift), so whole anatomies vary in placement like real exposures."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(-0.06, 0.06)
    scale = rng.uniform(0.92, 1.06)
    shift_x, shift_y = rng.uniform(-0.05, 0.05, size=2)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    return cos * x - sin * y - shift_x, sin * x + cos * y - shift_y


def _lungs(rng, x, y):
    """Signed inside functions of the image-left and image-right lung fields.
    Each is sheared so that its lateral base (the costophrenic angle) reaches
    lower than its medial base, which rests on the diaphragm dome."""
    fields = []
    for side in (-1.0, 1.0):
        cx = side * rng.uniform(0.38, 0.46)
        sheared_y = y - side * rng.uniform(0.2, 0.4) * (x - cx)
        fields.append(_superellipse(
            x, sheared_y, cx=cx, cy=rng.uniform(-0.1, 0.0),
            ax=rng.uniform(0.27, 0.34), ay=rng.uniform(0.58, 0.70),
            power=rng.uniform(2.2, 3.0), taper=rng.uniform(0.35, 0.55)))
    return fields


def _heart(rng, x, y):
    """Signed inside function of a rotated ellipse low and to the image right."""
    cx, cy = rng.uniform(0.12, 0.2), rng.uniform(0.30, 0.40)
    ax, ay = rng.uniform(0.30, 0.38), rng.uniform(0.22, 0.28)
    angle = rng.uniform(-0.5, -0.2)  # long axis runs down toward the image right
    u = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)
    v = -(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)
    return 1.0 - (u / ax) ** 2 - (v / ay) ** 2


def _clavicles(rng, x, y):
    """Signed inside function (in grid units) of two bands rising from the
    sternum toward the shoulders, each a gently curved parabola."""
    top = rng.uniform(-0.74, -0.62)
    rise, bend = rng.uniform(0.12, 0.22), rng.uniform(0.15, 0.35)
    inner, outer = rng.uniform(0.06, 0.12), rng.uniform(0.62, 0.75)
    thickness = rng.uniform(0.030, 0.045)
    reach = x.abs()
    centre_line = top + rise * (1 - reach) - bend * (reach - 0.4) ** 2
    across = thickness - (y - centre_line).abs()
    along = torch.minimum(reach - inner, outer - reach)
    return torch.minimum(across, along)


def _ribs(rng, x, y):
    """0..1 rib pattern: posterior ribs arch up from the spine and fall laterally,
    repeating down the chest."""
    period = rng.uniform(0.15, 0.19)
    arch, fall = rng.uniform(0.4, 0.7), rng.uniform(0.15, 0.3)
    band_y = y - arch * (x.abs() - 0.25) ** 2 - fall * x.abs()
    phase = (band_y - rng.uniform(0, period)) / period
    return (0.5 + 0.5 * torch.cos(2 * math.pi * phase)) ** 4


def make_phantom(seed: int, size: int = 128):
    """A synthetic chest radiograph and its labels.

    Returns (image, mask): image float32 [1, size, size] in [0, 1], mask int64
    [size, size] with classes of ``CLASS_NAMES``. The same seed gives the same pair.
    """
    rng = np.random.default_rng(seed)
    x, y = _grid(rng, size)
    edge = 2.0 / size  # one pixel: region edges are smooth but not blurry
    body = _superellipse(x, y, 0.0, 0.15, rng.uniform(0.84, 0.95), 1.05, power=rng.uniform(3, 5))
    lung_fields = _lungs(rng, x, y)
    heart = _heart(rng, x, y)
    clavicles = _clavicles(rng, x, y)
    spine = rng.uniform(0.06, 0.08) - x.abs()
    mediastinum = rng.uniform(0.12, 0.17) * (1.2 + 0.4 * y) - x.abs()  # widens downward

    body_soft, heart_soft = _soft(body, 3 * edge), _soft(heart, 5 * edge)
    # The heart hides the lung behind it; the lungs' air is what makes them dark.
    lung_soft = sum(_soft(field, 3 * edge) for field in lung_fields).clamp(max=1) * (1 - 0.8 * heart_soft)
    image = 0.04 + 0.48 * body_soft
    image = image + 0.10 * _soft(mediastinum, 4 * edge) * body_soft + 0.10 * _soft(spine, 2 * edge) * body_soft
    image = image - 0.36 * lung_soft * (1 + 0.15 * _smooth_noise(rng, size, 10))  # vessels
    image = image + 0.09 * heart_soft
    image = image + 0.16 * _ribs(rng, x, y) * (0.15 + 0.85 * lung_soft) * body_soft
    image = image + 0.26 * _soft(clavicles, edge)
    image = image * (1 + 0.08 * _smooth_noise(rng, size, 3))  # uneven exposure
    contrast, gamma = rng.uniform(0.8, 1.15), rng.uniform(0.8, 1.25)
    image = ((image - 0.3) * contrast + 0.3).clamp(0, 1) ** gamma
    image = _blur(image, sigma=rng.uniform(0.5, 1.2) * size / 128)
    image = image + rng.uniform(0.01, 0.03) * torch.from_numpy(rng.standard_normal((size, size), dtype=np.float32))

    mask = torch.zeros(size, size, dtype=torch.long)
    mask[((lung_fields[0] > 0) | (lung_fields[1] > 0)) & (body > 0)] = LUNG
    mask[heart > 0] = HEART
    mask[clavicles > 0] = CLAVICLE
    return image.clamp(0, 1)[None].contiguous(), mask


def phantom_seed(seed, index):
    """The seed of phantom ``index`` in a set seeded ``seed``: a hash of both, so
    sets of neighbouring seeds share no phantoms."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class PhantomDataset(Dataset):
    """``num_images`` chest phantoms, generated on access from (seed, index), so
    items do not depend on access order and workers need no shared state.

    Item: {"image": [1, H, W] float32, "mask": [H, W] int64, "name": "phantom_00042"}.
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, num_images: int, size: int = 128, seed: int = 0):
        if num_images < 0 or size < 8:
            raise ValueError(f"need num_images >= 0 and size >= 8, got {num_images} and {size}")
        self.num_images, self.size, self.seed = num_images, size, seed

    def __len__(self):
        return self.num_images

    def __getitem__(self, index):
        if not 0 <= index < self.num_images:
            raise IndexError(f"phantom index {index} out of range for {self.num_images} images")
        image, mask = make_phantom(phantom_seed(self.seed, index), self.size)
        return {"image": image, "mask": mask, "name": f"phantom_{index:05d}"}
