"""The bank's fill policies: ``bank_policies`` on its own, and ring and reservoir through
ReferenceBank.add, across batches and a state_dict round trip."""
import warnings

import pytest
import torch

from refmatch import ReferenceBank
from refmatch.bank_policies import reservoir_slots, ring_slots
from test_bank import one_class_batch, stored


@pytest.mark.parametrize("seen, count", [(0, 3), (2, 3), (0, 9), (5, 11)])
def test_ring_slots_take_the_newest_rows(seen, count):
    slots, picked = ring_slots(seen, count, capacity=4)
    kept = list(range(seen, seen + count))[-4:]
    assert picked.tolist() == [t - seen for t in kept] and slots.tolist() == [t % 4 for t in kept]


@pytest.mark.parametrize("seen, count", [(0, 3), (0, 10), (4, 20), (50, 7)])
def test_reservoir_slots_fill_in_order_then_once_each(seen, count):
    slots, picked = reservoir_slots(seen, count, 6, torch.Generator().manual_seed(seen + count))
    assert len(set(slots.tolist())) == slots.numel() and ((slots >= 0) & (slots < 6)).all()
    assert ((picked >= 0) & (picked < count)).all()
    assert set(range(seen, min(seen + count, 6))) <= set(slots.tolist())  # slot t for row t until full
    if seen + count <= 6:  # nothing drawn yet: row t in slot t
        assert slots.tolist() == list(range(seen, seen + count)) and picked.tolist() == list(range(count))


def test_ring_keeps_the_newest():
    bank = ReferenceBank(1, 1, capacity_per_class=4, dtype=torch.float32, metric="dot")
    bank.add(*one_class_batch([1.0, 2.0], 0, size=1))
    bank.add(*one_class_batch([3.0, 4.0, 5.0], 0, size=1))
    assert stored(bank, 0) == [2.0, 3.0, 4.0, 5.0]
    with pytest.warns(UserWarning, match=r"one add\(\) gave class 0 7 rows for its 4 slots: policy='ring' keeps "
                      r"the batch's last 4 in raster order .*policy='reservoir' keeps a uniform sample"):
        bank.add(*one_class_batch([float(v) for v in range(10, 17)], 0, size=1))  # more than capacity at once
    assert stored(bank, 0) == [13.0, 14.0, 15.0, 16.0]
    with warnings.catch_warnings():  # once per bank
        warnings.simplefilter("error")
        bank.add(*one_class_batch([float(v) for v in range(20, 27)], 0, size=1))
        sampled = ReferenceBank(1, 1, capacity_per_class=4, dtype=torch.float32, metric="dot", policy="reservoir")
        sampled.add(*one_class_batch([float(v) for v in range(10, 17)], 0, size=1))


def test_reservoir_is_uniform_over_everything_added():
    hits = torch.zeros(40)
    for seed in range(300):
        bank = ReferenceBank(1, 1, capacity_per_class=10, dtype=torch.float32, metric="dot",
                             policy="reservoir", seed=seed)
        for start in range(0, 40, 8):
            bank.add(*one_class_batch([float(v) for v in range(start, start + 8)], 0, size=1))
        assert len(stored(bank, 0)) == 10
        hits[torch.tensor(stored(bank, 0)).long()] += 1
    # each of 40 items is kept with probability 1/4: 75 expected of 300, sd ~7.5
    assert hits.min() > 45 and hits.max() < 105
    # and each batch of 8 alike: 600 of 2400, sd ~21 (a draw over the batch's end instead of
    # each row's ordinal keeps 0.18 to 0.32 of a batch: 430 to 770)
    per_batch = hits.view(5, 8).sum(dim=1)
    assert (per_batch - 600).abs().max() < 80, per_batch


def test_reservoir_loaded_from_state_dict_draws_on_as_the_saved_one():
    batches = [one_class_batch([float(v) for v in range(start, start + 8)], 0, size=1) for start in range(0, 40, 8)]
    saved = ReferenceBank(1, 1, capacity_per_class=10, dtype=torch.float32, metric="dot", policy="reservoir")
    for batch in batches[:2]:
        saved.add(*batch)
    state = {name: value.clone() for name, value in saved.state_dict().items()}
    resumed = ReferenceBank(1, 1, capacity_per_class=10, dtype=torch.float32, metric="dot", policy="reservoir",
                            seed=7)
    resumed.load_state_dict(state)
    for batch in batches[2:]:
        saved.add(*batch)
        resumed.add(*batch)
    assert torch.equal(saved.features, resumed.features)
    del state["generator_state"], state["settings"]  # saved before the random state and settings were kept
    ReferenceBank(1, 1, capacity_per_class=10, policy="reservoir").load_state_dict(state)


def test_reservoir_entry_probability_is_capacity_over_rows_seen():
    """The second row of a class with one slot enters with probability 1/2, the third with 1/3."""
    generator = torch.Generator().manual_seed(0)
    for seen, expected in ((1, 1 / 2), (2, 1 / 3)):
        entered = sum(len(reservoir_slots(seen, 1, 1, generator)[0]) for _ in range(4000)) / 4000
        assert entered == pytest.approx(expected, abs=0.03)
