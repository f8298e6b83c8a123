"""A plain U-Net with configurable width and depth (no torchvision or timm)."""
import torch
from torch import nn

from ..choices import check_choice


# "instance": per image and channel, the same in training and evaluation (nnU-Net's choice).
# "batch": running statistics, which a batch mixing strongly augmented unlabelled images skews
# away from clean images, and an EMA teacher's averaged weights do not match (docs/experiments.md,
# phantoms).
NORMS = {"batch": nn.BatchNorm2d, "instance": lambda channels: nn.InstanceNorm2d(channels, affine=True)}


def conv_block(in_channels, out_channels, norm):
    """Two 3x3 conv + normalisation (``NORMS``) + ReLU."""
    layer = NORMS[norm]
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), layer(out_channels), nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), layer(out_channels), nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """Upsample x2, concatenate the skip connection, conv block."""

    def __init__(self, in_channels, skip_channels, out_channels, norm):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = conv_block(in_channels // 2 + skip_channels, out_channels, norm)

    def forward(self, x, skip):
        """x [B, C_in, h, w], skip [B, C_skip, 2h, 2w] -> [B, C_out, 2h, 2w]."""
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net: [B, in_channels, H, W] -> logits [B, num_classes, H, W].

    H and W must be divisible by 2**(depth - 1). Encoder level i has
    width * 2**i channels; ``norm`` is "batch" or "instance" (``NORMS``). Decoder
    stages are named ``decoder.up{i}`` with ``up1`` at full resolution and
    ``up{depth-1}`` the coarsest, the names ``FeatureTap`` takes.

    Example:
        >>> model = UNet(in_channels=1, num_classes=2, width=16, depth=4)
        >>> model(torch.randn(2, 1, 128, 128)).shape
        torch.Size([2, 2, 128, 128])
    """

    def __init__(self, in_channels=1, num_classes=2, width=16, depth=4, norm="batch"):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        check_choice("norm", norm, tuple(NORMS))
        channels = [width * 2 ** level for level in range(depth)]
        self.depth = depth
        self.encoder = nn.ModuleList(
            [conv_block(in_channels, channels[0], norm)]
            + [conv_block(channels[level - 1], channels[level], norm) for level in range(1, depth)])
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleDict({
            f"up{level}": UpBlock(channels[level], channels[level - 1], channels[level - 1], norm)
            for level in range(depth - 1, 0, -1)})
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def decoder_channels(self, name):
        """Channels of decoder stage ``name`` ("decoder.up2" or "up2")."""
        return self.decoder[name.split(".")[-1]].conv[-2].num_features

    def forward(self, images):
        """images [B, in_channels, H, W] (H, W divisible by 2^(depth - 1)) -> logits [B, num_classes, H, W]."""
        skips = []
        x = images
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        for level in range(self.depth - 1, 0, -1):
            x = self.decoder[f"up{level}"](x, skips[level - 1])
        return self.head(x)
