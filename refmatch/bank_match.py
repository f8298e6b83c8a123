"""``match`` over a growable ``ReferenceBank``'s filled slots, and any bank's ``classwise_max``.

Class c owns slots [c * capacity, (c + 1) * capacity) and fills them in order, so its stored
rows are a prefix of its range. A cosine or dot bank runs one match over all of them: a view
of the slots where they form one run (each class between the first and the last holding rows
is full: a bank in steady state), else a copy of the stored rows. One walk costs less than a
walk per class, each preparing the queries again: at a lung teacher's shapes (32768 random
queries, 16110 + 2070 references, D = 24, cosine, 2 threads) 94 ms against 114-116. An l2 bank
runs one match per class, each class shifted by its own mean (the contract's l2 shift: one
shift for classes around 0 and 1000 loses the far class's digits), merged by score with the
lowest slot first among equals.
"""
import contextlib
import itertools

import torch

from .backends.scoring import accumulation_dtype, worst_score
from .candidates import keep_best, with_k_axis
from .ops import MatchResult, match


def match_filled_slots(bank, query, k, backend):
    """``MatchResult`` of ``query`` ([N, D] or [B, D, h, w], in the bank's dtype) against a
    growable ``bank``'s stored rows (at least k of them): ``index`` a slot, ``label`` its class;
    [N] / [B, h, w] for k = 1, else [N, k] / [B, k, h, w]."""
    counts = bank.counts.tolist()  # one host read
    classes = [cls for cls, count in enumerate(counts) if count]
    if bank.metric == "l2":
        return _match_class_by_class(bank, query, k, backend, classes, counts)
    first, last, capacity = classes[0], classes[-1], bank.capacity
    if all(counts[cls] == capacity for cls in range(first, last)):  # the stored slots are one run
        rows = bank.features[first * capacity:last * capacity + counts[last]]
        row_starts = [(cls - first) * capacity for cls in classes]
    else:
        with autocast_off(bank.features.device):  # under float16 autocast, cat of bfloat16 rows raises in torch
            rows = torch.cat([bank._class_rows(cls, counts) for cls in classes])
        row_starts = list(itertools.accumulate([counts[cls] for cls in classes[:-1]], initial=0))
    # before the match: a copy to a GPU after it would wait for it
    starts, owners = (torch.tensor(values, device=rows.device) for values in (row_starts, classes))
    found = match(query, rows, k=k, metric=bank.metric, backend=backend)
    # contiguous: map results' index is a permuted view, which searchsorted would copy with a warning
    group = (torch.searchsorted(starts, found.index.contiguous(), right=True) - 1).clamp(min=0)  # -1: any group
    matched = found.index >= 0
    slot = torch.where(matched, found.index - starts[group] + owners[group] * capacity, -1)
    return MatchResult(found.score, slot, torch.where(matched, owners[group], -1))


def autocast_off(device):
    """A context in which ``device``'s autocast is off (a no-op where it has none, as meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _match_class_by_class(bank, query, k, backend, classes, counts):
    """The l2 bank's match: one per class, merged best first (ties: lower class, lower slot)."""
    scores, slots, labels = [], [], []
    for cls in classes:
        found = match(query, bank._class_rows(cls, counts), k=min(k, counts[cls]), metric=bank.metric,
                      backend=backend)
        score, index = with_k_axis(found.score)[0], with_k_axis(found.index)[0]
        scores.append(score)
        slots.append(torch.where(index >= 0, index + cls * bank.capacity, -1))
        labels.append(torch.where(index >= 0, cls, -1))
    best = keep_best(torch.cat(scores, 1), k, torch.cat(slots, 1), torch.cat(labels, 1), larger_wins=False)
    return MatchResult(*(values[:, 0] if k == 1 else values for values in best))  # k = 1: no k axis


def classwise_scores(bank, query, backend):
    """[N, C] (rows) or [B, C, h, w] (maps): ``query``'s best score per class of ``bank``
    (``query`` in the bank's dtype; a class with no stored row scores the worst score), one
    match per class."""
    worst = worst_score(bank.metric)
    per_class = []
    counts = None if bank.capacity is None else bank.counts.tolist()  # one host read, not one a class
    for cls in range(bank.num_classes):
        block = bank._class_rows(cls, counts)
        if block.shape[0] == 0:
            shape = (query.shape[0],) if query.dim() == 2 else (query.shape[0], *query.shape[2:])
            per_class.append(torch.full(shape, worst, device=query.device,
                                        dtype=accumulation_dtype(bank.features.dtype)))
        else:
            per_class.append(match(query, block, metric=bank.metric, backend=backend).score)
        del block  # a fixed bank's class copy, freed before the next class's is gathered
    return torch.stack(per_class, dim=1)
