"""The benchmark's float64 oracle and its agreement checks, independent of refmatch's kernels
(it takes only the worst score per metric from ``backends.scoring``).

The oracle scores every (query, reference) pair densely in float64, a chunk of query
rows at a time (``chunk_bytes`` of scores), and keeps per metric the best
``slots`` scores of each row and the best score per class. A method agrees on a row
when it returns the k slots asked for, best first (within tolerance: exact ties may
come in any index order), each scoring, recomputed in float64 from the row it names,
within ``1e-4 * max(1, |oracle|)`` of the oracle's slot; a slot past M's references
(-1) never agrees. Class-wise scores are compared class by class.
"""
import itertools

import torch
import torch.nn.functional as F

from .backends.scoring import worst_score

METRICS = ("dot", "l2", "cosine")
RELATIVE_TOLERANCE = 1e-4
# Class-wise scores come from the kernels, not recomputed: half-precision GEMMs (the CPU's)
# round them to their own precision.
CLASSWISE_TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _scores(query, reference, reference_norm_sq):
    """{metric: [n, M] float64 scores}: q.r, cosine and squared distance, from one product."""
    dot = query @ reference.T
    query_norm_sq = query.square().sum(1, keepdim=True)
    cosine = dot / (query_norm_sq.sqrt() * reference_norm_sq.sqrt()[None]).clamp_min(1e-12)
    return {"dot": dot, "cosine": cosine, "l2": (query_norm_sq - 2 * dot + reference_norm_sq[None]).clamp_min(0)}


def _class_columns(labels, classes):
    """Per class, (its columns of a score matrix, whether it has any): slices where ``labels``
    are sorted, as the benchmark's grouped classes are (a view, not a gather per chunk), else
    boolean masks."""
    counts = torch.bincount(labels, minlength=classes)[:classes].tolist()
    if labels.numel() < 2 or bool((labels[1:] >= labels[:-1]).all()):
        ends = itertools.accumulate(counts)
        return [(slice(end - count, end), count > 0) for end, count in zip(ends, counts)]
    return [(labels == c, count > 0) for c, count in enumerate(counts)]


class Float64Oracle:
    """Best ``slots`` scores per row [N, slots] (``top[metric]``, distances ascending for
    l2) and, with ``labels`` [M] in [0, classes), the best per class [N, classes]
    (``per_class[metric]``) of query [N, D] against reference [M, D]. ``chunk_bytes`` (None:
    256 MiB on the CPU, 2 GiB on a GPU, where small chunks spend the time launching) bounds
    each chunk's [rows, M] float64 scores."""

    def __init__(self, query, reference, labels=None, classes=0, slots=8, chunk_bytes=None):
        self.query, self.reference = query.double(), reference.double()
        chunk_bytes = chunk_bytes or (1 << 31 if reference.is_cuda else 1 << 28)
        rows = max(1, chunk_bytes // (8 * max(1, reference.shape[0])))
        self.slots, slots = slots, min(slots, reference.shape[0])
        parts = {metric: ([], []) for metric in METRICS}
        reference_norm_sq = self.reference.square().sum(1)
        members = [] if labels is None else _class_columns(labels, classes)
        for start in range(0, query.shape[0], rows):
            for metric, scores in _scores(self.query[start:start + rows], self.reference, reference_norm_sq).items():
                largest, worst = metric != "l2", worst_score(metric)
                parts[metric][0].append(scores.topk(slots, dim=1, largest=largest).values)
                if members:
                    pick = torch.amax if largest else torch.amin
                    parts[metric][1].append(torch.stack(
                        [pick(scores[:, member], dim=1) if present else scores.new_full((scores.shape[0],), worst)
                         for member, present in members], dim=1))
        # Slots past M hold the worst score, which no returned slot can match.
        self.top = {metric: F.pad(torch.cat(top), (0, self.slots - slots), value=worst_score(metric))
                    for metric, (top, _) in parts.items()}
        self.per_class = {metric: torch.cat(per_class) for metric, (_, per_class) in parts.items() if per_class}

    def agreement(self, index, metric, k=1):
        """Fraction of rows whose returned indices ([N] or [N, k], k <= ``slots``) score,
        slot by slot, within tolerance of the oracle's best k."""
        index = index.reshape(self.query.shape[0], -1).to(self.query.device).long()
        if index.shape[1] != k:
            return 0.0  # fewer (or more) slots than asked for
        valid = ((index >= 0) & (index < self.reference.shape[0])).all(dim=1)
        ranked = index.sort(dim=1).values  # a reference named twice is one neighbour, not two
        valid &= (ranked[:, 1:] != ranked[:, :-1]).all(dim=1)
        rows = self.reference[index.clamp(0, self.reference.shape[0] - 1)]  # [N, k, D]
        queries = self.query[:, None, :]
        if metric == "dot":
            picked = (queries * rows).sum(2)
        elif metric == "cosine":
            picked = F.cosine_similarity(queries, rows, dim=2, eps=1e-12)
        else:
            picked = (queries - rows).square().sum(2)
        better_first = picked if metric != "l2" else -picked
        step = better_first[:, :-1] - better_first[:, 1:]  # >= 0 best first; ties within tolerance
        ordered = (step >= -RELATIVE_TOLERANCE * better_first[:, :-1].abs().clamp(min=1)).all(dim=1)
        picked = picked.sort(dim=1, descending=metric != "l2").values
        return self._fraction(picked, self.top[metric][:, :k], valid & ordered, RELATIVE_TOLERANCE)

    def classwise_agreement(self, scores, metric, dtype):
        """Fraction of rows whose class-wise scores [N, C] all match the oracle's per class."""
        expected = self.per_class[metric]
        scores = scores.reshape(expected.shape).to(expected.device).double()
        empty = torch.isinf(expected) & (scores == expected)  # a class with no reference
        tolerance = CLASSWISE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE)
        close = (scores - expected).abs() <= tolerance * expected.abs().clamp(min=1)
        return (close | empty).all(dim=1).double().mean().item()

    @staticmethod
    def _fraction(picked, best, valid, tolerance):
        close = ((picked - best).abs() <= tolerance * best.abs().clamp(min=1)).all(dim=1)
        return (close & valid).double().mean().item()
