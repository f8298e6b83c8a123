"""PseudoLabeler (vote: test_vote.py, test_vote_random.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import refmatch
from refmatch import PseudoLabeler, ReferenceBank, vote
from refmatch.demo import synthetic_batch


@pytest.fixture(scope="module")
def phantoms():
    features, labels = synthetic_batch(12, 4, 32, 32, torch.Generator().manual_seed(1))
    bank = ReferenceBank(32, 4, capacity_per_class=4096, dtype=torch.float32)
    bank.add(features[:6], labels[:6])
    return bank, features[6:], labels[6:]


@pytest.mark.parametrize("mode, k", [("hard", 1), ("soft", 1), ("soft", 8)])
def test_beats_nearest_class_mean(phantoms, mode, k):
    bank, features, truth = phantoms
    labels, confidence, kept = PseudoLabeler(bank, k=k, mode=mode)(features)
    assert labels.shape == confidence.shape == truth.shape and kept.item() == 1.0
    means = torch.stack([F.normalize(bank._class_rows(c).nan_to_num().sum(0), dim=0) for c in range(4)])
    baseline = torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), means).argmax(1)
    accuracy = (labels == truth).float().mean()
    assert accuracy > (baseline == truth).float().mean() + 0.05


def test_out_size_and_threshold(phantoms):
    bank, features, truth = phantoms
    labeler = PseudoLabeler(bank, mode="soft", threshold=0.5, out_size=(64, 64), ignore_index=255)
    labels, confidence, kept = labeler(features[:, :, ::2, ::2])
    assert labels.shape == (6, 64, 64)
    assert ((labels == 255) == (confidence < 0.5)).all()
    assert 0 < kept.item() < 1
    assert kept.item() == pytest.approx((labels != 255).float().mean().item())
    probabilities = labeler.probabilities(features[:, :, ::2, ::2])  # soft targets: the threshold's not applied
    assert probabilities.shape == (6, 4, 64, 64) and torch.equal(probabilities.argmax(1)[labels != 255],
                                                                 labels[labels != 255])
    hard = PseudoLabeler(bank, out_size=(64, 64))(features[:, :, ::2, ::2]).labels
    assert torch.equal(hard[:, ::4, ::4], PseudoLabeler(bank)(features[:, :, ::2, ::2]).labels)


def test_hard_labels_are_resized_by_pixel_centres():
    """3 feature pixels to 8: each output pixel takes the feature pixel under its centre (3, 2, 3
    pixels, symmetric); torch's "nearest" read under its corner (3, 3, 2: a 375-pixel side from
    27 feature pixels had 12 rows off by one)."""
    bank = ReferenceBank.from_tensors(torch.eye(3), torch.arange(3), metric="dot")
    features = torch.eye(3)[:, None, :][None]  # [1, 3, 1, 3]: pixel j is reference j's row
    labels = PseudoLabeler(bank, out_size=(1, 8))(features).labels
    assert labels.tolist() == [[[0, 0, 0, 1, 1, 2, 2, 2]]]


def test_soft_probabilities_are_resized_bilinearly_by_pixel_centres():
    """2 feature pixels to 4 (align_corners=False): the inner two mix them 3:1, not 2:1."""
    bank = ReferenceBank.from_tensors(torch.eye(2), torch.arange(2), metric="dot")
    labeler = PseudoLabeler(bank, mode="soft", out_size=(1, 4))
    first, second = labeler.probabilities(torch.eye(2)[:, None, :][None])[0, 0, 0].tolist()[::3]
    expected = [first, 0.75 * first + 0.25 * second, 0.25 * first + 0.75 * second, second]
    assert labeler.probabilities(torch.eye(2)[:, None, :][None])[0, 0, 0].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode, k", [("hard", 1), ("soft", 1), ("soft", 8)])
def test_an_empty_batch_gives_empty_labels_and_keeps_nothing(phantoms, mode, k):
    """A mean over no pixels is NaN, which spoiled the averages of a training log."""
    bank, features, _ = phantoms
    labels, confidence, kept = PseudoLabeler(bank, k=k, mode=mode, out_size=64)(features[:0])
    assert labels.shape == confidence.shape == (0, 64, 64)
    assert kept.dtype == torch.float32 and kept.item() == 0


def test_int_out_size_is_square(phantoms):
    bank, features, _ = phantoms
    square = PseudoLabeler(bank, mode="soft", out_size=64)(features[:2]).labels
    assert torch.equal(square, PseudoLabeler(bank, mode="soft", out_size=(64, 64))(features[:2]).labels)
    for spatial_shape in (np.array([64, 64]), torch.tensor([64, 64])):  # as MONAI's meta["spatial_shape"]
        assert torch.equal(square, PseudoLabeler(bank, mode="soft", out_size=spatial_shape)(features[:2]).labels)
    with pytest.raises(ValueError, match=r"out_size must be .* got \(64,\)"):
        PseudoLabeler(bank, out_size=(64,))


def test_agree_with_must_match_the_labels_shape(phantoms):
    bank, features, truth = phantoms
    labeler = PseudoLabeler(bank)
    for wrong in (truth[:, ::2, ::2], truth[0], truth.tolist()):
        with pytest.raises(ValueError, match=r"agree_with must be labels of shape \[B, H, W\] = \[6, 32, 32\]"):
            labeler(features, agree_with=wrong)
    logits = torch.randn(6, 4, 32, 32)  # the teacher's output itself: the fix is named
    with pytest.raises(ValueError, match=r"\(6, 4, 32, 32\); for \[B, C, H, W\] logits pass their .argmax\(1\)"):
        labeler(features, agree_with=logits)
    with pytest.raises(ValueError, match=r"channel axis of one .* pass agree_with\[:, 0\]"):  # not .argmax(1): all 0
        labeler(features, agree_with=truth[:, None])
    with pytest.raises(ValueError, match=r"pass agree_with\[:, 0\].long\(\)$"):  # AsDiscrete's float32
        labeler(features, agree_with=truth[:, None].float())
    labels = labeler(features, agree_with=truth).labels
    assert ((labels == truth) | (labels == 255)).all()


@pytest.mark.parametrize("arguments, error, message", [
    (dict(mode="soft", k=0), ValueError, "k must be >= 1, got 0"),
    (dict(mode="hard", k=2), ValueError, r"mode=hard takes the nearest reference \(k=1\), got k=2"),
    (dict(mode="fuzzy"), ValueError, "mode must be one of"),
    (dict(temperature=0), ValueError, "temperature must be finite and > 0, got 0"),
    (dict(mode="soft", temperature=float("inf")), ValueError, "temperature must be finite and > 0, got inf"),
    (dict(threshold=float("nan")), ValueError, "threshold must be a number or None, got nan"),
    (dict(temperature="0.1"), TypeError, "temperature must be a number, got str"),
    (dict(threshold="high"), TypeError, "threshold must be a number, got str"),
    (dict(threshold=2), ValueError, r"threshold=2.0 would keep no pixel: hard mode's .* cosine .* \[-1, 1\]"),
    (dict(mode="soft", threshold=1.5), ValueError, r"would keep no pixel: soft mode's confidence, the margin"),
    (dict(ignore_index=0), ValueError, "ignore_index=0 is one of the bank's classes 0..3"),
    (dict(ignore_index="255"), TypeError, "ignore_index must be an int or None, got str"),
])
def test_labeler_arguments_are_checked_when_built(phantoms, arguments, error, message):
    with pytest.raises(error, match=message):
        PseudoLabeler(phantoms[0], **arguments)


def test_agree_with_must_hold_integer_labels(phantoms):
    bank, features, _ = phantoms
    with pytest.raises(TypeError, match="agree_with must hold integer labels"):
        PseudoLabeler(bank)(features[:1], agree_with=torch.zeros(1, 32, 32))


def test_l2_votes_and_pseudo_labels_follow_the_nearest_reference():
    # Distances: the nearest (smallest) wins, in votes, soft and hard pseudo-labels and confidence.
    close = refmatch.MatchResult(score=torch.tensor([[0.1, 5.0, 5.0]]), index=torch.tensor([[0, 1, 2]]),
                                 label=torch.tensor([[1, 0, 0]]))
    share = 1 / (1 + 2 * torch.exp(torch.tensor(-4.9)))  # softmax of -(0.1, 5, 5) at temperature 1
    torch.testing.assert_close(vote(close, num_classes=2, temperature=1.0, metric="l2").probabilities,
                               torch.stack([1 - share, share])[None])
    bank = ReferenceBank(2, 2, capacity_per_class=4, dtype=torch.float32, metric="l2")
    bank.add(torch.tensor([[0.0, 0.0], [4.0, 0.0], [4.2, 0.0]]).T[None, :, :, None], torch.tensor([[[1], [0], [0]]]))
    queries = torch.tensor([[0.1, 0.0], [3.0, 0.0], [50.0, 0.0], [float("nan"), 0.0]]).T[None, :, :, None]
    assert PseudoLabeler(bank, ignore_index=9)(queries).labels[0, :, 0].tolist() == [1, 0, 0, 9]
    hard = PseudoLabeler(bank, threshold=-1.0, ignore_index=9)(queries)
    assert hard.labels[0, :, 0].tolist() == [1, 0, 9, 9]  # far (45.8^2 away) and unmatched (NaN) dropped
    torch.testing.assert_close(hard.confidence[0, :3, 0], torch.tensor([-0.01, -1.0, -45.8 ** 2]))
    # k = 3 at temperature 0.1: one close class-1 reference outvotes two farther class-0 ones
    # (uniform votes would elect class 0); NaN features get ignore_index in soft mode too.
    soft = PseudoLabeler(bank, k=3, mode="soft", ignore_index=9)(queries[:, :, [0, 3]])
    assert soft.labels[0, :, 0].tolist() == [1, 9]
