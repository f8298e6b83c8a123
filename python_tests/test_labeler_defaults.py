"""PseudoLabeler's defaults taken from its bank, and what the labeler and the tap print."""
import torch

import refmatch
from refmatch import PseudoLabeler, ReferenceBank
from refmatch.demo import synthetic_batch


def phantom_features():
    """Synthetic [6, 32, 32, 32] features and their [6, 32, 32] labels of 4 classes."""
    features, labels = synthetic_batch(6, 4, 32, 32, torch.Generator().manual_seed(1))
    return features, labels


def test_dropped_pixels_take_the_banks_ignore_index():
    """Masks marked -100 (F.cross_entropy's default) went into a bank of ignore_index=-100, but its
    pseudo-labels were dropped as 255, which that loss refused ("Target 255 is out of bounds")."""
    features, truth = phantom_features()
    for own, dropped in ((-100, -100), (255, 255), (None, 255), (0, 255)):  # 0: a class, so not a fill value
        bank = ReferenceBank(32, 4, capacity_per_class=4096, dtype=torch.float32, ignore_index=own)
        bank.add(features, truth)
        labels = PseudoLabeler(bank, threshold=0.999)(features).labels
        assert labels.eq(dropped).any() and set(labels.unique().tolist()) <= {dropped, 0, 1, 2, 3}
    assert PseudoLabeler(bank, ignore_index=-1).ignore_index == -1


def test_labeler_and_tap_print_their_settings():
    bank = ReferenceBank(32, 4, capacity_per_class=64)
    assert repr(PseudoLabeler(bank, mode="soft", k=8, threshold=0.2, out_size=64)) == (
        "PseudoLabeler(ReferenceBank, mode='soft', k=8, threshold=0.2, temperature=0.1, out_size=64, ignore_index=255)")
    tap = refmatch.FeatureTap(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3)), ["0"], size=(32, 16))
    assert repr(tap) == "FeatureTap(layers=['0'], size=(32, 16), normalize=True)"
    tap.close()
    assert repr(tap).endswith(", closed)")
