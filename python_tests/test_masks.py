"""Masks brought down to feature resolution: downsample_masks' modes, and the bank rows they give."""
import pytest
import torch

from refmatch import ReferenceBank
from refmatch.masks import downsample_masks


def test_mask_downsampling_modes():
    masks = torch.tensor([[[0, 0, 1, 1],
                           [0, 1, 1, 1],
                           [2, 2, 255, 255],
                           [2, 2, 255, 0]],
                          [[0, 1, 1, 1],  # ties: no majority, so dropped (not the lower label, background)
                           [0, 1, 1, 1],
                           [2, 2, 0, 0],
                           [255, 255, 0, 0]]])
    majority = downsample_masks(masks, (2, 2), 3, 255, "majority")
    assert majority.tolist() == [[[0, 1], [2, 255]], [[255, 1], [255, 0]]]
    pure = downsample_masks(masks, (2, 2), 3, 255, "pure")
    assert pure.tolist() == [[[255, 1], [2, 255]], [[255, 1], [255, 0]]]
    labelled = downsample_masks(masks, (2, 2), 3, 255, "labelled")  # ignored pixels abstain
    assert labelled.tolist() == [[[0, 1], [2, 0]], [[255, 1], [2, 0]]]
    nearest = downsample_masks(masks, (2, 2), 3, 255, "nearest")  # each 2x2 block's pixel after its centre
    assert nearest.tolist() == [[[1, 1], [2, 0]], [[1, 1], [255, 0]]]


def test_nearest_downsampling_takes_the_block_centre():
    """Torch's "nearest" took each block's first pixel: half a block off (7 pixels at patch 14)."""
    masks = torch.zeros(1, 28, 28, dtype=torch.long)
    masks[0, 7:21, 7:21] = 1  # centred square: the centre pixel of each 14x14 block is (7, 7)
    assert downsample_masks(masks, (2, 2), 2, 255, "nearest").tolist() == [[[1, 0], [0, 0]]]
    masks[0, :7, :] = 2  # first rows only: never at a block's centre
    assert downsample_masks(masks, (2, 2), 3, 255, "nearest").tolist() == [[[1, 0], [0, 0]]]


def test_one_labelled_slice_fills_a_labelled_bank():
    """A volume with one labelled slice: its 4-slice blocks are 3/4 ignored, so "majority" keeps
    no row, while "labelled" takes the labelled slice's classes (a 3-D encoder's use)."""
    masks = torch.full((1, 32, 16, 16), 255)
    masks[0, 10] = torch.arange(16)[:, None].expand(16, 16) // 8  # class 0 on top, class 1 below
    features = torch.randn(1, 4, 8, 4, 4)
    with pytest.warns(UserWarning, match="downsample='labelled' for sparse labels"):
        majority = ReferenceBank(4, 2, capacity_per_class=64, dtype=torch.float32)
        majority.add(features, masks)
    assert majority.class_counts().tolist() == [0, 0]
    labelled = ReferenceBank(4, 2, capacity_per_class=64, dtype=torch.float32, metric="dot", downsample="labelled")
    labelled.add(features, masks)
    assert labelled.class_counts().tolist() == [8, 8]  # slice block 2 of 8: 4 x 4 pixels, half each class
    torch.testing.assert_close(labelled.features[:8], features[0, :, 2, :2].reshape(4, -1).T)


def test_labelled_downsampling_ignores_a_block_without_labelled_pixels_even_with_one_class():
    """With two or more classes an all-ignored block ties; with one, only its zero share says so."""
    masks = torch.full((1, 4, 4), 255)
    masks[0, 0, 0] = 0
    assert downsample_masks(masks, (2, 2), 1, 255, "labelled").tolist() == [[[0, 255], [255, 255]]]
