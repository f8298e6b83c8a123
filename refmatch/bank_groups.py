"""What a ``ReferenceBank``'s matches run over, and how their results come together.

Cosine and dot banks: one group, every stored row (a growable bank's classes' filled slots
gathered: one fused walk costs less than a walk per class, each preparing the queries again).
l2 banks: one group per class, because ``refmatch.match`` shifts l2 features by the mean of
the reference it is given (docs/contract.md): a class far from the others keeps a shift of its
own (one shift for classes around 0 and 1000 left class-wise distances 400 % off).
"""
from typing import NamedTuple, Optional

import torch

from .candidates import keep_best, with_k_axis
from .ops import MatchResult


class Group(NamedTuple):
    """rows [S, D], labels [S], slots [S] (each row's bank slot, or row of a ``from_tensors``
    bank; None: row i is slot i) and the ``ignore_index`` to match with (None: none ignored)."""

    rows: torch.Tensor
    labels: torch.Tensor
    slots: Optional[torch.Tensor]
    ignore_index: Optional[int]


def bank_groups(bank):
    """[Group] of ``bank``'s stored rows (one host read of its class counts)."""
    counts = bank.counts.tolist()
    present = [cls for cls, count in enumerate(counts) if count]
    if bank.capacity is None:
        if bank.metric != "l2":
            ignore_index = bank.ignore_index if sum(counts) < bank.labels.shape[0] else None
            return [Group(bank.features, bank.labels, None, ignore_index)]
        chosen = [(bank.labels == cls).nonzero()[:, 0] for cls in present]
        return [Group(bank.features[rows], bank.labels[rows], rows, None) for rows in chosen]
    starts = {cls: cls * bank.capacity for cls in present}
    classes_per_group = [[cls] for cls in present] if bank.metric == "l2" else [present]
    groups = []
    for classes in classes_per_group:
        parts = [bank.features[starts[cls]:starts[cls] + counts[cls]] for cls in classes]
        labels = torch.cat([bank.labels[starts[cls]:starts[cls] + counts[cls]] for cls in classes])
        slots = torch.cat([torch.arange(starts[cls], starts[cls] + counts[cls], device=labels.device)
                           for cls in classes])
        groups.append(Group(parts[0] if len(parts) == 1 else torch.cat(parts), labels, slots, None))
    return groups


def merged_matches(results, groups, k, larger_wins):
    """One ``MatchResult`` from each group's, ``index`` as bank slots. Several groups' candidates
    are ordered by slot, then stably by score, so equal scores keep the lowest slot."""
    found = [(result.score, _as_slots(result.index, group.slots), result.label)
             for result, group in zip(results, groups)]
    if len(found) == 1:
        return MatchResult(*found[0])
    score, slot, label = (torch.cat([with_k_axis(tensor)[0] for tensor in column], dim=1) for column in zip(*found))
    by_slot = slot.argsort(dim=1)  # -1 (no match) first; its worst score sorts it last below
    best = keep_best(score.gather(1, by_slot), k, slot.gather(1, by_slot), label.gather(1, by_slot),
                     larger_wins=larger_wins)
    return MatchResult(*(values[:, 0] if k == 1 else values for values in best))  # k = 1: no k axis


def merged_classwise(per_group, larger_wins):
    """[N, C] (or [B, C, h, w]) per-class bests from each group's: their maximum (minimum for l2)."""
    if len(per_group) == 1:
        return per_group[0]
    stacked = torch.stack(per_group)
    return stacked.amax(dim=0) if larger_wins else stacked.amin(dim=0)


def _as_slots(index, slots):
    return index if slots is None else torch.where(index >= 0, slots[index.clamp(min=0)], -1)
