"""A torchvision-free toy model for the FeatureTap tests."""
from torch import nn


class TinyUNet(nn.Module):
    """Two-level encoder/decoder with named decoder stages, like a small U-Net."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1))
        self.decoder = nn.ModuleDict({
            "up2": nn.Conv2d(16, 12, 3, padding=1),
            "up1": nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(12, 6, 3, padding=1)),
        })
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, images):
        return self.head(self.decoder["up1"](self.decoder["up2"](self.encoder(images))))
