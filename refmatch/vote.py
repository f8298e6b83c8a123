"""``vote``: top-k matches or class-wise scores to a class distribution."""
import math
from typing import NamedTuple, Optional, SupportsIndex, Union

import torch

from .arguments import as_int, as_number, check_integer_labels, check_label_values, volume_hint
from .backends.scoring import METRICS, accumulation_dtype, host_read_allowed
from .candidates import with_k_axis
from .choices import check_choice
from .masks import label_is
from .ops import MatchResult

WEIGHTINGS = ("uniform", "similarity")


class Vote(NamedTuple):
    """probabilities: float32 [N, C] or [B, C, H, W] (float64 for float64 scores), summing to
    1 over C where any candidate exists (0 everywhere otherwise); confidence: the margin
    between the two most probable classes, [N] or [B, H, W] in the same dtype."""

    probabilities: torch.Tensor
    confidence: torch.Tensor


def best_class(scores):
    """The index of the first largest value over dim 1, as argmax gives it: [N, C] -> [N],
    [B, C, H, W] -> [B, H, W] int64. max's indices, as argmax over a CPU tensor's dim 1 of
    maps took 15 times longer (3.6 against 0.24 ms at 8 x 4 x 64 x 64)."""
    return scores.max(dim=1).indices


def margin(probabilities):
    """Top-1 minus top-2 probability over dim 1 (the whole top-1 when C = 1): [N, C] -> [N],
    [B, C, H, W] -> [B, H, W]."""
    if probabilities.shape[1] == 1:
        return probabilities[:, 0]
    top = probabilities.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def _softmax(scores, sign, temperature, voted=None):
    """softmax(sign * scores / temperature) over dim 1 in float32 (float64 for float64 scores:
    their range and digits stay), where NaN (which never wins a match) and entries outside
    ``voted`` (bool, scores' shape, or None) cast no vote. Scaled after subtracting each row's
    best, so that large scores do not overflow to inf (and the softmax to NaN); a row whose best
    is +inf (a dot product can be) shares its weight among its +inf entries, and a row of none
    gets none. Works in place on one copy (a float32 class-wise vote peaks at 3.3 times the
    scores' size, result included; 6.7 out of place)."""
    oriented = scores.to(accumulation_dtype(scores.dtype)).mul(sign)  # the copy the steps below change in place
    no_vote = oriented.isnan() if voted is None else oriented.isnan().logical_or_(voted.logical_not())
    best = oriented.masked_fill_(no_vote, float("-inf")).amax(dim=1, keepdim=True)
    weight = torch.softmax(oriented.sub_(best).div_(temperature), dim=1)  # NaN rows where best is infinite
    at_infinity = oriented.isnan().logical_and_(best == float("inf"))  # inf - inf; -inf rows have best -inf
    shares = oriented.copy_(at_infinity)  # reused; a float sum: a bool one widens to int64 first
    shares.div_(shares.sum(dim=1, keepdim=True).clamp_min(1))
    return weight.masked_fill_(best.isinf(), 0.0).add_(shares)


def _check_reference_labels(labels, index):
    """``labels`` is an [M] integer tensor on the matches' device that covers every matched
    index (M is unknown here; one host read of the largest index, skipped under compile)."""
    if labels is None:
        raise ValueError("the match result has no labels: pass labels=[M] reference labels")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    check_integer_labels(labels)
    if labels.dim() != 1 or labels.device != index.device:
        raise ValueError(f"labels must be [M] reference labels on {index.device}, got shape "
                         f"{tuple(labels.shape)} on {labels.device}")
    if host_read_allowed(index) and index.numel() and int(index.max()) >= labels.shape[0]:
        raise ValueError(f"the matches reach reference row {int(index.max())}, but labels has "
                         f"{labels.shape[0]} rows: pass the labels of the reference that was matched")


def _check_scores_fit_metric(scores, metric):
    """Cosine similarities lie in [-1, 1] and l2 distances are >= 0: scores outside
    mean ``metric`` is not the one that produced them (l2 distances voted as
    similarities elect the farthest neighbour). One host read; skipped under
    torch.compile and graph capture."""
    if metric == "dot" or not host_read_allowed(scores) or scores.numel() == 0:
        return
    lowest, highest = torch.stack(torch.aminmax(scores)).tolist()
    if not math.isfinite(lowest) or not math.isfinite(highest):  # then over the finite ones (masked copies)
        finite = scores.isfinite()
        lowest, highest = torch.stack([torch.where(finite, scores, float("inf")).amin(),
                                       torch.where(finite, scores, float("-inf")).amax()]).tolist()
    if metric == "cosine" and max(-lowest, highest) > 1.001 and lowest <= highest:
        raise ValueError(f"scores reach {max(-lowest, highest):.4g}, outside a cosine's [-1, 1]: pass "
                         "metric= the metric that produced them ('l2' for distances, 'dot')")
    if metric == "l2" and lowest < 0:
        raise ValueError(f"scores go down to {lowest:.4g}, but l2 distances are >= 0: pass "
                         "metric= the metric that produced them ('cosine', 'dot')")


def _check_best_first(score, metric):
    """A top-k list [N, k] comes best first, so no slot may clearly beat its row's first under
    ``metric``: one that does means the list was ranked under another metric (l2 distances rise
    along k, similarities fall), which ``_check_scores_fit_metric`` misses where the scores stay
    in range (l2 distances below 1 voted as cosines elect the farthest neighbour). The slack
    (1e-4 of the first score, at least 1e-4) lets through the ulps by which near-ties can be
    ordered. One host read; skipped under torch.compile and graph capture."""
    if score.shape[1] < 2 or score.numel() == 0 or not host_read_allowed(score):
        return
    first = score[:, :1].float()
    gain = score[:, 1:] - first  # a new tensor; NaN where either is NaN or both the same infinity: never "beats"
    if metric == "l2":
        gain.neg_()
    if bool((gain > 1e-4 * first.abs().clamp_min(1)).any()):
        trend, like, best, hint = (("fall", "similarities", "smallest", "'cosine' or 'dot'") if metric == "l2" else
                                   ("rise", "l2 distances", "largest", "'l2'"))
        raise ValueError(f"the top-k scores {trend} along k in some row, as {like} do, but a match with "
                         f"metric={metric!r} lists them best ({best}) first: pass metric= the metric of the match "
                         f"({hint})")


def checked_temperature(temperature):
    """``temperature`` as a float; ValueError unless finite and > 0, and TypeError for a
    non-number. Scores divide by it in float32: inf, or a value past float32's range that
    becomes inf there, would make -inf / inf (no vote) NaN, and a value below float32's
    smallest normal number rounds to 0 there (0 / 0 for the best)."""
    temperature = as_number("temperature", temperature)
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if temperature > torch.finfo(torch.float32).max:
        raise ValueError(f"temperature={temperature} is inf in float32: use at most "
                         f"{torch.finfo(torch.float32).max:.3g}")
    if temperature < torch.finfo(torch.float32).tiny:
        raise ValueError(f"temperature={temperature} rounds to 0 in float32: use at least "
                         f"{torch.finfo(torch.float32).tiny:.3g}")
    return temperature


def vote(result_or_scores: Union[MatchResult, torch.Tensor], labels: Optional[torch.Tensor] = None, *,
         num_classes: SupportsIndex, weighting: str = "similarity", temperature: float = 0.1, metric: str = "cosine",
         ignore_index: Optional[SupportsIndex] = None) -> Vote:
    """Class distribution per query from top-k matches or class-wise scores.

    Args:
        result_or_scores: a ``MatchResult`` of ``match`` (any k), or class-wise scores
            [N, C] / [B, C, H, W] as ``classwise_max`` returns them.
        labels: [M] labels of the references, needed when the result has none (refused
            with class-wise scores, whose classes are their dim 1).
        num_classes: C.
        weighting: for matches, "uniform" (each of the k neighbours one vote) or
            "similarity" (votes weighted by softmax(score / temperature) over k).
            Class-wise scores always use softmax over classes. A NaN score casts no vote.
        temperature: softmax temperature of "similarity" weighting and class-wise scores, in the score
            units of the metric; finite, > 0 and within float32's range (1.2e-38 to 3.4e38).
        metric: the metric that produced the scores; for "l2" (distances) smaller wins.
            Scores outside its range (a cosine beyond [-1, 1], a negative distance),
            and top-k lists in another metric's order (distances rise along k,
            similarities fall), raise where they are weighed, since the wrong metric
            reverses or distorts the vote; "uniform" votes of matches never read them.
            Class-wise scores in range are taken as they come: pass their metric.
        ignore_index: matches carrying this label cast no vote (class-wise scores
            have no labels, so it does not apply to them).
    Returns:
        Vote(probabilities, confidence), with no gradient (targets, as ``match``'s results;
        scores that require grad are detached). Matches with index -1 cast no vote; any
        other label must be in [0, C) or ``ignore_index``.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    temperature = checked_temperature(temperature)
    num_classes, ignore_index = as_int("num_classes", num_classes), as_int("ignore_index", ignore_index, optional=True)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    check_choice("metric", metric, METRICS)
    if not isinstance(result_or_scores, (MatchResult, torch.Tensor)):
        raise TypeError("result_or_scores must be a MatchResult or a tensor of class-wise scores, "
                        f"got {type(result_or_scores).__name__}")
    sign = -1.0 if metric == "l2" else 1.0
    if not isinstance(result_or_scores, MatchResult):
        scores = result_or_scores.detach()  # targets, as match's results: in-place steps below
        if scores.dim() not in (2, 4) or scores.shape[1] != num_classes:
            raise ValueError(f"class-wise scores must be [N, C] or [B, C, H, W] with C={num_classes}, "
                             f"got shape {tuple(scores.shape)}" + volume_hint(scores))
        if not scores.dtype.is_floating_point:
            raise TypeError(f"class-wise scores must be floating point (classwise_max's), got {scores.dtype}")
        if labels is not None:
            raise ValueError("class-wise scores carry their classes in dim 1: leave out labels=")
        _check_scores_fit_metric(scores, metric)
        probabilities = _softmax(scores, sign, temperature)
        return Vote(probabilities, margin(probabilities))

    index = result_or_scores.index
    label = result_or_scores.label
    if label is None:
        _check_reference_labels(labels, index)
        label = torch.where(index >= 0, labels[index.clamp(min=0)].long(), -1)
    elif labels is not None:
        raise ValueError("the match result carries labels already (match was given them): leave out labels=")
    label, _ = with_k_axis(label)
    index, _ = with_k_axis(index)
    score, _ = with_k_axis(result_or_scores.score.detach())
    if weighting == "similarity":  # uniform votes never read the scores
        _check_scores_fit_metric(score, metric)
        _check_best_first(score, metric)
    # A -1 label is "no match" only where the index says so; elsewhere it is a bad label.
    check_label_values(label.masked_fill(index < 0, 0), ignore_index, num_classes)
    voted = label >= 0 if ignore_index is None else (label >= 0) & ~label_is(label, ignore_index)
    if weighting == "uniform":
        weight = voted.to(accumulation_dtype(score.dtype))
    else:
        weight = _softmax(score, sign, temperature, voted)
    shape = list(label.shape)
    shape[1] = num_classes
    totals = weight.new_zeros(shape).scatter_add_(1, label.masked_fill(~voted, 0), weight)  # 0 where not voted
    probabilities = totals / totals.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return Vote(probabilities, margin(probabilities))
