"""``vote`` on random matches and class-wise scores against a plain per-row statement of its rule."""
import math

import pytest
import torch

import refmatch

IGNORE = 255


def expected_vote(scores, labels, num_classes, weighting, temperature, sign):
    """Per row: each candidate (label >= 0, not IGNORE, score not NaN; every candidate for
    uniform votes) adds its weight to its class, then the totals are normalised (0 where no
    candidate). Weights: 1 (uniform) or softmax(sign * score / temperature) over the row's
    candidates. Returns (probabilities [N, C], confidence [N])."""
    probabilities = torch.zeros(scores.shape[0], num_classes, dtype=torch.float64)
    for row, (row_scores, row_labels) in enumerate(zip(scores.double().tolist(), labels.tolist())):
        voters = [(s, c) for s, c in zip(row_scores, row_labels)
                  if c >= 0 and c != IGNORE and (weighting == "uniform" or not math.isnan(s))]
        if not voters:
            continue
        if weighting == "uniform":
            weights = [1.0] * len(voters)
        else:
            best = max(sign * s for s, _ in voters)
            weights = [math.exp((sign * s - best) / temperature) for s, _ in voters]
        for weight, (_, label) in zip(weights, voters):
            probabilities[row, label] += weight / sum(weights)
    top = probabilities.topk(min(2, num_classes), dim=1).values
    confidence = top[:, 0] - (top[:, 1] if num_classes > 1 else 0)
    return probabilities, confidence


@pytest.mark.parametrize("seed", range(24))
def test_vote_follows_its_rule_on_random_matches(seed):
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(torch.randint(1, 6, (), generator=gen))
    metric = ["cosine", "dot", "l2"][seed % 3]
    num_refs, depth = int(torch.randint(1, 300, (), generator=gen)), int(torch.randint(1, 20, (), generator=gen))
    query, reference = torch.randn(40, depth, generator=gen), torch.randn(num_refs, depth, generator=gen)
    labels = torch.randint(num_classes, (num_refs,), generator=gen)
    labels[torch.rand(num_refs, generator=gen) < 0.3] = IGNORE
    k = int(torch.randint(1, min(num_refs, 12) + 1, (), generator=gen))
    weighting = ["uniform", "similarity"][seed // 3 % 2]
    temperature = [0.05, 0.1, 1.0][seed // 6 % 3]
    # matched without ignore_index, IGNORE labels reach the vote, which must leave them out
    matched_ignore = IGNORE if seed % 4 < 2 else None
    result = refmatch.match(query, reference, labels, k=k, metric=metric, backend="torch", ignore_index=matched_ignore)
    voted = refmatch.vote(result, num_classes=num_classes, weighting=weighting, temperature=temperature,
                          metric=metric, ignore_index=IGNORE)
    sign = -1.0 if metric == "l2" else 1.0
    expected = expected_vote(result.score.reshape(40, -1), result.label.reshape(40, -1), num_classes, weighting,
                             temperature, sign)
    torch.testing.assert_close(voted.probabilities.double(), expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(voted.confidence.double(), expected[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(12))
def test_vote_follows_its_rule_on_random_classwise_scores(seed):
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(torch.randint(1, 6, (), generator=gen))
    metric = ["cosine", "dot", "l2"][seed % 3]
    query, reference = torch.randn(30, 8, generator=gen), torch.randn(60, 8, generator=gen)
    labels = torch.randint(num_classes + 1, (60,), generator=gen)  # class num_classes: IGNORE
    labels[labels == num_classes] = IGNORE
    scores = refmatch.classwise_max(query, reference, labels, num_classes, metric=metric, backend="torch",
                                    ignore_index=IGNORE)
    scores[torch.rand(scores.shape, generator=gen) < 0.1] = float("nan")  # NaN casts no vote
    temperature = [0.05, 0.5][seed // 3 % 2]
    voted = refmatch.vote(scores, num_classes=num_classes, temperature=temperature, metric=metric)
    sign = -1.0 if metric == "l2" else 1.0
    finite_classes = torch.where(scores.isinf(), -1, torch.arange(num_classes))  # no reference: no vote
    expected = expected_vote(scores, finite_classes, num_classes, "similarity", temperature, sign)
    torch.testing.assert_close(voted.probabilities.double(), expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(voted.confidence.double(), expected[1], atol=1e-6, rtol=0)


def test_scores_that_require_grad_give_targets_without_gradient():
    """vote's softmax runs in place: scores with a gradient gave probabilities with a grad_fn
    whose backward raised (an inplace-modified softmax output); they are detached now."""
    per_class = torch.rand(5, 3, requires_grad=True)
    matches = refmatch.match(torch.randn(5, 4), torch.randn(12, 4), torch.randint(0, 3, (12,)), k=4)
    top = matches._replace(score=matches.score.clone().requires_grad_())
    for voted in (refmatch.vote(per_class, num_classes=3), refmatch.vote(top, num_classes=3)):
        assert not voted.probabilities.requires_grad and not voted.confidence.requires_grad
    assert torch.equal(refmatch.vote(per_class, num_classes=3).probabilities,
                       refmatch.vote(per_class.detach(), num_classes=3).probabilities)


def test_float64_scores_vote_in_float64():
    """Class-wise dot scores of 2e39, 6e39 and -1e39 (float64): cast to float32 the first two became
    inf and split the vote; the largest class takes it all at temperature 1."""
    scores = torch.tensor([[2e39, 6e39, -1e39], [0.5, 0.5 + 1e-12, 0.0]], dtype=torch.float64)
    probabilities, confidence = refmatch.vote(scores, num_classes=3, metric="dot", temperature=1.0)
    assert probabilities.dtype == confidence.dtype == torch.float64
    assert probabilities[0].tolist() == [0.0, 1.0, 0.0] and probabilities[1, 1] > probabilities[1, 0]
    found = refmatch.match(torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), k=3)
    for weighting in ("uniform", "similarity"):
        vote = refmatch.vote(found, torch.tensor([0, 1, 2, 0, 1, 2]), num_classes=3, weighting=weighting)
        assert vote.probabilities.dtype == torch.float64


def test_scores_outside_their_metrics_range_are_refused_at_the_edge():
    """Cosines may pass 1 by rounding (1.0005 goes through), not by 5 %; an l2 distance may not be
    negative at all; a top-k list may not rise by more than its slack of 1e-4."""
    refmatch.vote(torch.tensor([[1.0005, 0.2]]), num_classes=2)
    with pytest.raises(ValueError, match="scores reach 1.05, outside a cosine's"):
        refmatch.vote(torch.tensor([[1.05, 0.2]]), num_classes=2)
    refmatch.vote(torch.tensor([[0.0, 0.2]]), num_classes=2, metric="l2")
    with pytest.raises(ValueError, match="scores go down to -0.0005, but l2 distances are >= 0"):
        refmatch.vote(torch.tensor([[-5e-4, 0.2]]), num_classes=2, metric="l2")
    ranked = refmatch.MatchResult(torch.tensor([[0.5, 0.50004]]), torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    refmatch.vote(ranked, num_classes=2)  # within the slack: near-ties ordered by an ulp
    with pytest.raises(ValueError, match="the top-k scores rise along k"):
        refmatch.vote(ranked._replace(score=torch.tensor([[0.5, 0.505]])), num_classes=2)
