"""vote on hand-computed cases, its argument checks and its metrics (random cases: test_vote_random.py)."""
import pytest
import torch

import refmatch
from refmatch import vote


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


def test_margin_of_one_class_is_its_probability():
    assert vote(torch.tensor([[0.3], [float("-inf")]]), num_classes=1).confidence.tolist() == [1.0, 0.0]

