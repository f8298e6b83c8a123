"""PseudoLabeler and vote."""
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


def test_vote_by_hand():
    result = refmatch.MatchResult(score=torch.tensor([[0.9, 0.8, 0.1]]), index=torch.tensor([[4, 2, -1]]),
                                  label=torch.tensor([[1, 0, -1]]))
    uniform = vote(result, num_classes=3, weighting="uniform")
    assert uniform.probabilities.tolist() == [[0.5, 0.5, 0.0]] and uniform.confidence.tolist() == [0.0]
    weighted = vote(result, num_classes=3, temperature=0.1)
    share = 1 / (1 + torch.exp(torch.tensor(-1.0)))  # softmax of (9, 8)
    torch.testing.assert_close(weighted.probabilities, torch.tensor([[1 - share, share, 0.0]]))
    classwise = vote(torch.tensor([[0.0, 0.1, float("-inf")]]), num_classes=3, temperature=0.1)
    torch.testing.assert_close(classwise.probabilities[0, :2].sum(), torch.tensor(1.0))
    assert classwise.probabilities[0, 2] == 0


def test_vote_maps_and_labels_argument():
    maps = torch.randn(2, 4, 3, 3)
    reference, labels = torch.randn(10, 4), torch.randint(0, 3, (10,))
    result = refmatch.match(maps, reference, k=4)
    out = vote(result, labels, num_classes=3)
    assert out.probabilities.shape == (2, 3, 3, 3) and out.confidence.shape == (2, 3, 3)
    torch.testing.assert_close(out.probabilities.sum(1), torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="no labels"):
        vote(result, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=2"):
        vote(result, labels, num_classes=2)


def test_vote_refuses_bad_arguments():
    reference, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    result = refmatch.match(torch.randn(5, 4), reference, k=3)
    with pytest.raises(ValueError, match="metric must be one of .*got 'L2'"):
        vote(torch.randn(5, 3), num_classes=3, metric="L2")
    with pytest.raises(TypeError, match="MatchResult or a tensor of class-wise scores, got tuple"):
        vote(tuple(result), labels, num_classes=3)
    with pytest.raises(ValueError, match="labels must be >= 0, got -1"):
        vote(result, labels - 1, num_classes=3)
    matched_minus_one = refmatch.MatchResult(torch.tensor([0.9]), torch.tensor([2]), torch.tensor([-1]))
    with pytest.raises(ValueError, match="labels must be >= 0, got -1"):
        vote(matched_minus_one, num_classes=3)
    with pytest.raises(TypeError, match="temperature must be a number, got str"):
        vote(result, labels, num_classes=3, temperature="0.1")
    with pytest.raises(TypeError, match="temperature must be a number, got bool"):
        vote(result, labels, num_classes=3, temperature=True)
    beyond = refmatch.MatchResult(torch.tensor([0.9]), torch.tensor([3]), None)  # row 3 of 3 labels
    with pytest.raises(ValueError, match="the matches reach reference row 3, but labels has 3 rows"):
        vote(beyond, labels[:3], num_classes=3)
    for temperature in (0.0, float("inf")):  # inf: a -inf score (no vote) over inf is NaN in the softmax
        with pytest.raises(ValueError, match=f"temperature must be finite and > 0, got {temperature}"):
            vote(result, labels, num_classes=3, temperature=temperature)
    with pytest.raises(ValueError, match="temperature=1e-300 rounds to 0 in float32: use at least 1.18e-38"):
        vote(result, labels, num_classes=3, temperature=1e-300)  # gave NaN probabilities
    assert vote(result, labels, num_classes=3, temperature=1.2e-38).probabilities.isfinite().all()
    with pytest.raises(ValueError, match="temperature=1e\\+39 is inf in float32: use at most 3.4e\\+38"):
        vote(result, labels, num_classes=3, temperature=1e39)  # -inf / inf: NaN probabilities
    assert vote(result, labels, num_classes=3, temperature=3.4e38).probabilities.isfinite().all()
    with pytest.raises(TypeError, match=r"integer dtype \(.*\), got torch.float32"):
        vote(result, labels.float(), num_classes=3)
    with pytest.raises(ValueError, match="labels has 2 rows"):
        vote(result._replace(index=result.index.clamp(min=2)), labels[:2], num_classes=3)
    with pytest.raises(ValueError, match="carries labels already"):
        vote(refmatch.match(torch.randn(5, 4), reference, labels, k=3), labels, num_classes=3)
    with pytest.raises(TypeError, match="class-wise scores must be floating point .*got torch.int64"):
        vote(torch.ones(5, 3, dtype=torch.long), num_classes=3)
    with pytest.raises(ValueError, match="class-wise scores carry their classes in dim 1: leave out labels="):
        vote(torch.rand(5, 3), labels, num_classes=3)


def test_vote_names_a_top_k_list_ranked_under_another_metric():
    """l2 distances below 1 fit a cosine's range, so only their order gives them away: voted as
    cosines (vote's default) they elected the farthest neighbours' class."""
    reference = torch.zeros(10, 4)
    reference[:6, 0], reference[6:, 0] = 0.2, 0.8  # class 0 at squared distance 0.04, class 1 at 0.64
    labels = torch.tensor([0] * 6 + [1] * 4)
    distances = refmatch.match(torch.zeros(1, 4), reference, labels, k=8, metric="l2")
    with pytest.raises(ValueError, match="rise along k .* as l2 distances do.*pass metric= .*'l2'"):
        vote(distances, num_classes=2)  # gave class 1 a probability of 0.993
    assert vote(distances, num_classes=2, metric="l2").probabilities.argmax(1).tolist() == [0]
    uniform = vote(distances, num_classes=2, weighting="uniform")  # reads no scores
    assert uniform.probabilities.tolist() == [[0.75, 0.25]]
    similarities = refmatch.match(torch.ones(3, 4), reference.abs() + 0.1, labels, k=8, metric="cosine")
    with pytest.raises(ValueError, match="fall along k .* as similarities do.*'cosine' or 'dot'"):
        vote(similarities, num_classes=2, metric="l2")


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("screen", [False, True])
def test_vote_takes_every_top_k_list_of_its_metric(metric, screen):
    """No false alarm from the order check: integer features full of exact ties (ordered by index,
    or, where the CPU's bfloat16 screen rescores them, as rounding falls), and the rows of a map."""
    from refmatch.backends.torch_backend import match_chunked

    generator = torch.Generator().manual_seed(3)
    query, reference = (torch.randint(-2, 3, (n, 6), generator=generator).float() for n in (64, 300))
    labels = torch.randint(0, 3, (300,), generator=generator)
    score, index = match_chunked(query.T[None, :, :, None], reference, None, 8, metric, block_m=64,
                                 tile_bytes=32 * 64 * 2, screen=screen)
    result = refmatch.MatchResult(score, index, labels[index])
    assert vote(result, num_classes=3, metric=metric).probabilities.sum(1).allclose(torch.ones(64))
    maps = refmatch.match(query.T.reshape(1, 6, 8, 8), reference, labels, k=8, metric=metric)
    assert vote(maps, num_classes=3, metric=metric).probabilities.shape == (1, 3, 8, 8)


def test_vote_of_infinite_scores():
    # Scaled after subtracting the row's best: 3e38 / 0.1 overflowed, and softmax gave NaN -> 0.
    assert vote(torch.tensor([[1e38, 2e38, 3e38]]), num_classes=3, metric="l2").probabilities.tolist() == [[1, 0, 0]]
    infinite = vote(torch.tensor([[float("inf"), 1.0, float("inf")]]), num_classes=3, metric="dot")
    assert infinite.probabilities.tolist() == [[0.5, 0, 0.5]]  # +inf dot products share the vote
    result = refmatch.MatchResult(score=torch.tensor([[float("inf"), 5.0]]), index=torch.tensor([[0, 1]]),
                                  label=torch.tensor([[2, 0]]))
    assert vote(result, num_classes=3, metric="dot").probabilities.tolist() == [[0, 0, 1]]
    assert vote(torch.full((1, 2), float("-inf")), num_classes=2).probabilities.tolist() == [[0, 0]]
    # NaN never wins a match, so it casts no vote (it made the whole row NaN).
    nan = float("nan")
    assert vote(torch.tensor([[nan, 0.5], [nan, nan]]), num_classes=2).probabilities.tolist() == [[0, 1], [0, 0]]
    result = refmatch.MatchResult(score=torch.tensor([[nan, 0.5]]), index=torch.tensor([[0, 1]]),
                                  label=torch.tensor([[1, 0]]))
    assert vote(result, num_classes=2).probabilities.tolist() == [[1, 0]]
    # An ignored +inf match casts no vote; the others share as if it were not there.
    result = refmatch.MatchResult(score=torch.tensor([[float("inf"), 5.0, 5.0]]), index=torch.tensor([[0, 1, 2]]),
                                  label=torch.tensor([[255, 0, 1]]))
    assert vote(result, num_classes=2, metric="dot", ignore_index=255).probabilities.tolist() == [[0.5, 0.5]]


def test_vote_on_classwise_scores_takes_little_memory():
    """208 MiB extra here (3.3 times the scores, result included), 260 in a loaded CI run; the
    out-of-place steps before session 27 took 428 (6.7 times)."""
    from refmatch.bench_timing import PeakMemory

    scores = torch.rand(16, 4, 512, 512) * 2 - 1  # 64 MiB
    vote(scores, num_classes=4)  # warm-up
    with PeakMemory("cpu") as peak:
        voted = vote(scores, num_classes=4)
    assert peak.peak_mib < 5 * 64 and voted.probabilities.shape == scores.shape


def test_vote_keeps_float32_under_a_float64_default_dtype():
    """Its own tensors (the +inf share, the class totals) take the scores' dtype, not torch's default."""
    result = refmatch.MatchResult(score=torch.tensor([[0.9, 0.5, 0.1]]), index=torch.tensor([[0, 1, 2]]),
                                  label=torch.tensor([[2, 0, 2]]))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        votes = [vote(result, num_classes=3, weighting=weighting) for weighting in ("uniform", "similarity")]
    finally:
        torch.set_default_dtype(default)
    assert all(v.probabilities.dtype == torch.float32 for v in votes)
    assert votes[0].probabilities[0].tolist() == pytest.approx([1 / 3, 0, 2 / 3])


def test_vote_refuses_scores_of_another_metric():
    # l2 distances voted as cosine similarities elect the farthest neighbour.
    reference, labels = torch.randn(50, 8), torch.randint(0, 4, (50,))
    distances = refmatch.match(torch.randn(6, 8), reference, labels, k=8, metric="l2")
    with pytest.raises(ValueError, match="outside a cosine's \\[-1, 1\\]: pass metric="):
        vote(distances, num_classes=4)
    assert vote(distances, num_classes=4, metric="l2").probabilities.shape == (6, 4)
    similarities = refmatch.match(torch.randn(6, 8), reference, labels, k=50, metric="cosine")  # some < 0
    with pytest.raises(ValueError, match="l2 distances are >= 0"):
        vote(similarities, num_classes=4, metric="l2")
    numpy = pytest.importorskip("numpy")
    assert vote(similarities, num_classes=numpy.int64(4)).probabilities.shape == (6, 4)
    uniform = vote(distances, num_classes=4, weighting="uniform")  # never reads the scores
    assert torch.equal(uniform.probabilities, vote(distances, num_classes=4, weighting="uniform",
                                                   metric="l2").probabilities)


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


def test_margin_of_one_class_is_its_probability():
    assert vote(torch.tensor([[0.3], [float("-inf")]]), num_classes=1).confidence.tolist() == [1.0, 0.0]

