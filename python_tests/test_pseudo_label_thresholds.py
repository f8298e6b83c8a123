"""PseudoLabeler's confidence threshold: one for every pixel or one per class, and the
thresholds that could keep no pixel, refused when the labeler is built."""
import numpy as np
import pytest
import torch

from refmatch import PseudoLabeler, ReferenceBank
from refmatch.demo import synthetic_batch


@pytest.fixture(scope="module")
def phantoms():
    features, labels = synthetic_batch(8, 4, 16, 16, torch.Generator().manual_seed(3))  # [8, 16, 16, 16], 4 classes
    bank = ReferenceBank(16, 4, capacity_per_class=1024, dtype=torch.float32)
    bank.add(features[:4], labels[:4])
    return bank, features[4:]


def test_a_threshold_above_every_confidence_is_refused_per_metric():
    """An l2 bank's hard confidence is minus the squared distance: a distance-like positive
    threshold kept no pixel, silently. Thresholds that can keep pixels pass, dot's any."""
    l2_bank = ReferenceBank.from_tensors(torch.randn(8, 4), torch.arange(8) % 2, metric="l2")
    with pytest.raises(ValueError, match=r"threshold=0.5 would keep no pixel: .*l2 bank .* threshold=-d"):
        PseudoLabeler(l2_bank, threshold=0.5)
    kept = PseudoLabeler(l2_bank, threshold=-4.0)(torch.randn(2, 4, 3, 3)).kept_fraction
    assert 0 < kept.item() <= 1
    for metric, mode, threshold in [("cosine", "hard", 1.0), ("dot", "hard", 1e6), ("l2", "soft", 1.0)]:
        bank = ReferenceBank.from_tensors(torch.randn(8, 4), torch.arange(8) % 2, metric=metric)
        PseudoLabeler(bank, mode=mode, threshold=threshold, temperature=1.0)


@pytest.mark.parametrize("mode, k", [("hard", 1), ("soft", 8)])
@pytest.mark.parametrize("as_type", [list, tuple, torch.tensor, np.array])
def test_per_class_thresholds_drop_each_pixel_by_its_own_class(phantoms, mode, k, as_type):
    bank, features = phantoms
    free = PseudoLabeler(bank, k=k, mode=mode, out_size=24)(features)
    per_class = [0.0, 0.9, 0.5, -1.0] if mode == "hard" else [0.0, 0.9, 0.3, 0.0]
    labels, confidence, kept = PseudoLabeler(bank, k=k, mode=mode, threshold=as_type(per_class), out_size=24)(features)
    assert torch.equal(confidence, free.confidence)
    expected = torch.where(free.confidence < torch.tensor(per_class)[free.labels], 255, free.labels)
    assert torch.equal(labels, expected)
    dropped = labels == 255
    assert dropped.any() and not dropped.all()
    assert dropped[free.labels == 1].float().mean() > dropped[free.labels == 0].float().mean()
    assert kept.item() == pytest.approx(1 - dropped.float().mean().item())


def test_one_threshold_per_class_is_one_threshold_for_all(phantoms):
    bank, features = phantoms
    one = PseudoLabeler(bank, mode="soft", threshold=0.4)(features)
    each = PseudoLabeler(bank, mode="soft", threshold=[0.4] * 4)(features)
    assert torch.equal(one.labels, each.labels) and torch.equal(one.kept_fraction, each.kept_fraction)


@pytest.mark.parametrize("threshold, error, message", [
    ([0.1, 0.2], ValueError, r"threshold must be a number or one per class \(4 for this bank\), got 2 values"),
    (torch.zeros(5), ValueError, r"one per class \(4 for this bank\), got 5 values"),
    ([0.1, float("nan"), 0.1, 0.1], ValueError, r"threshold\[1\] must be a number, got nan"),
    ([0.1, "high", 0.1, 0.1], TypeError, r"threshold\[1\] must be a number, got str"),
    ([0.1, 0.1, 1.5, 0.1], ValueError, r"threshold\[2\]=1.5 would keep no pixel of its class: hard mode's .* cosine"),
    (torch.zeros(2, 2), TypeError, "threshold must be a number, got Tensor"),
])
def test_per_class_thresholds_are_checked_when_built(phantoms, threshold, error, message):
    with pytest.raises(error, match=message):
        PseudoLabeler(phantoms[0], threshold=threshold)
