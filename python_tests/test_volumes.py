"""3-D volumes through FeatureTap, ReferenceBank.add and PseudoLabeler: [B, D, z, h, w] features
with [B, Z, H, W] masks, brought down over blocks in all three axes and labels brought back up
in all three (a volume flattened to maps mixed slices in both directions: 17 % of voxels took
another label when depth was downsampled too, in a user's trial)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refmatch import FeatureTap, PseudoLabeler, ReferenceBank, vote

GENERATOR = torch.Generator().manual_seed(7)


def blocky_volume(coarse, factor=2):
    """[B, z, h, w] labels upsampled by ``factor`` in every axis, with one voxel of each block
    flipped to another class: a clear 7-of-8 majority per block, different in every slice pair."""
    fine = coarse.repeat_interleave(factor, 1).repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    fine[:, ::factor, ::factor, ::factor] = (coarse + 1) % 3
    return fine


def test_add_brings_masks_down_over_3d_blocks_and_labels_each_voxel_row():
    coarse = torch.randint(0, 3, (2, 3, 4, 5), generator=GENERATOR)
    features = torch.randn(2, 8, 3, 4, 5, generator=GENERATOR)
    bank = ReferenceBank(8, 3, capacity_per_class=200, dtype=torch.float32)
    bank.add(features, blocky_volume(coarse))
    assert bank.counts.tolist() == torch.bincount(coarse.flatten(), minlength=3).tolist()
    found = bank.match(features.flatten(2, 3))  # each voxel's row matches itself
    assert torch.equal(found.label.reshape(coarse.shape), coarse)
    with pytest.raises(ValueError, match=r"masks must be \[B=2, Z, H, W\], got shape \(2, 8, 10\): 2-D masks, but "
                                         r"the features are a volume .* deep-supervision output"):  # MONAI's DynUNet
        bank.add(features, torch.zeros(2, 8, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(6, 8, 10\): one volume's mask without its batch axis\? pass "
                                         r"masks\[None\]$"):
        bank.add(features[:1], torch.zeros(6, 8, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"masks are 6x8x9 but features are 3x4x5: the mask size must be an integer"
                                         r".* tap with FeatureTap\(size=...\) at the masks' size"):
        bank.add(features, torch.zeros(2, 6, 8, 9, dtype=torch.long))


@pytest.mark.parametrize("mode, k", [("hard", 1), ("soft", 1), ("soft", 4)])
def test_pseudo_labels_of_volumes_come_back_at_the_volume_size(mode, k):
    coarse = torch.randint(0, 3, (2, 3, 4, 5), generator=GENERATOR)
    features = torch.randn(2, 8, 3, 4, 5, generator=GENERATOR)
    bank = ReferenceBank(8, 3, capacity_per_class=200, dtype=torch.float32)
    bank.add(features, blocky_volume(coarse))
    labeler = PseudoLabeler(bank, mode=mode, k=k, out_size=(6, 8, 10), temperature=0.01)
    labels, confidence, kept = labeler(features)
    assert labels.shape == confidence.shape == (2, 6, 8, 10) and kept.item() == 1.0
    nearest = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    if mode == "hard":  # each voxel's own row wins, brought up by nearest in all three axes
        assert torch.equal(labels, nearest)
    else:  # soft probabilities go up trilinearly; at the features' size each voxel's own row wins
        at_features = PseudoLabeler(bank, mode=mode, k=k, temperature=0.01)(features).labels
        assert torch.equal(at_features, coarse)
        assert (labels == nearest).float().mean() > 0.6 and labels.unique().tolist() == [0, 1, 2]
    if mode == "soft":  # the distribution whose argmax the labels are, for soft-target losses
        probabilities = labeler.probabilities(features)
        assert probabilities.shape == (2, 3, 6, 8, 10) and torch.equal(probabilities.argmax(1), labels)
        torch.testing.assert_close(probabilities.sum(1), torch.ones(2, 6, 8, 10))
    else:
        with pytest.raises(ValueError, match="probabilities are soft mode's"):
            labeler.probabilities(features)
    agree = labels.clone()
    agree[0, 0, 0, 0] = (agree[0, 0, 0, 0] + 1) % 3
    assert (labeler(features, agree_with=agree).labels == 255).sum() == 1
    with pytest.raises(ValueError, match=r"agree_with must be labels of shape \[B, Z, H, W\] = \[2, 6, 8, 10\]"):
        labeler(features, agree_with=nearest[:, 0])
    with pytest.raises(ValueError, match=r"for \[B, C, Z, H, W\] logits pass their .argmax\(1\)"):
        labeler(features, agree_with=torch.randn(2, 3, 6, 8, 10))
    with pytest.raises(ValueError, match=r"out_size=\(6, 8\) gives 2 sides, but the maps have 3 spatial dims"):
        PseudoLabeler(bank, out_size=(6, 8))(features)


class Tiny3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, padding=1)
        self.down = nn.Conv3d(4, 6, 3, stride=2, padding=1)

    def forward(self, volume):
        return self.down(self.stem(volume))


def test_feature_tap_resizes_volumes_trilinearly_to_the_largest():
    model = Tiny3d()
    with FeatureTap(model, ["stem", "down"]) as tap:
        volume = torch.randn(2, 1, 4, 8, 6, generator=GENERATOR)
        model(volume)
        features = tap.features()
        assert features.shape == (2, 10, 4, 8, 6)
        low = model.down(model.stem(volume))
        expected = F.normalize(F.interpolate(low, size=(4, 8, 6), mode="trilinear", align_corners=False), dim=1)
        torch.testing.assert_close(features[:, 4:], expected)
    with FeatureTap(model, ["stem", "down"], size=2) as tap:
        model(volume)
        assert tap.features().shape == (2, 10, 2, 2, 2)
    with FeatureTap(model, ["stem"], size=(4, 4)) as tap:
        model(volume)
        with pytest.raises(ValueError, match=r"size=\(4, 4\) gives 2 sides, but the maps have 3 spatial dims"):
            tap.features()


def test_volume_mistakes_say_what_to_pass():
    """A channel axis out of place, or a volume flattened before add or vote, had no hint."""
    bank = ReferenceBank(8, 3, 100, dtype=torch.float32)
    volume = torch.randn(1, 8, 4, 6, 6)
    with pytest.raises(ValueError, match=r"D=4 channels, .*channels are axis 2, .permute\(0, 2, 1, 3, 4\) passes"):
        bank.add(volume.transpose(1, 2), torch.zeros(1, 8, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B=1, H, W\], got shape \(1, 4, 6, 6\): volumes' features go in as they"):
        bank.add(volume.flatten(2, 3), torch.zeros(1, 4, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B=1, H, W\], got shape \(1, 6, 6, 1\)$"):  # channels last: no such hint
        bank.add(volume[:, :, 0], torch.zeros(1, 6, 6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 4, 6, 6\); a volume .* volume.flatten\(2, 3\)"):
        vote(torch.randn(1, 3, 4, 6, 6), num_classes=3)
