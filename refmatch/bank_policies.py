"""Which slots of a class a ReferenceBank fills from a batch of new rows, per policy.

A class owns ``capacity`` slots and has seen ``seen`` rows before this batch of
``count``; row t of the class stream (t = seen .. seen + count - 1) is the batch's
row t - seen. Both functions return (slots [S], picked [S]): slot slots[i] takes the
batch's row picked[i], each slot at most once, on the CPU.
"""
import torch

POLICIES = ("ring", "reservoir")


def ring_slots(seen, count, capacity):
    """"ring": row t goes to slot t mod capacity, replacing the oldest; only the newest
    ``capacity`` rows of the batch can survive it."""
    keep = torch.arange(seen, seen + count)[-capacity:]
    return keep % capacity, keep - seen


def reservoir_slots(seen, count, capacity, generator):
    """"reservoir" (Algorithm R): row t fills slot t while t < capacity, then enters with
    probability capacity / (t + 1) into a uniformly drawn slot, so the class keeps a uniform
    sample of every row it has seen. Draws from ``generator``; within the batch a later row
    overwrites an earlier one drawn to the same slot."""
    order = torch.arange(seen, seen + count)
    draw = (torch.rand(count, generator=generator, dtype=torch.float64) * (order + 1)).long()
    slots = torch.where(order < capacity, order, draw)
    enters = slots < capacity
    slots, picked = slots[enters], enters.nonzero()[:, 0]
    last = torch.full((capacity,), -1, dtype=torch.long).scatter_reduce_(0, slots, picked, "amax")
    slots = (last >= 0).nonzero()[:, 0]
    return slots, last[slots]
