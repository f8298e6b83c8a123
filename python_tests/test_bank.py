"""ReferenceBank: caps, ignore handling, masks, state_dict, errors (policies: test_bank_policies)."""
import re
import warnings

import pytest
import torch

from refmatch import ReferenceBank


def one_class_batch(values, cls, size=2):
    """Features whose every pixel of image i holds the constant values[i], all labelled cls."""
    features = torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, size, size)
    return features.contiguous(), torch.full((len(values), size, size), cls)


def stored(bank, cls):
    block = bank.features[cls * bank.capacity:(cls + 1) * bank.capacity, 0]
    return sorted(v for v in block.tolist() if v == v)


def test_class_balance_caps_and_counts():
    bank = ReferenceBank(4, 3, capacity_per_class=5, dtype=torch.float32)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :2] = 1  # class 1: 2 rows of 8 pixels per image -> after 2x pooling 8 px; class 2 absent
    bank.add(torch.randn(2, 4, 4, 4), masks)
    assert bank.class_counts().tolist() == [5, 5, 0] and len(bank) == 10
    assert bank.seen.tolist() == [24, 8, 0]


def test_no_ignore_index_stores_every_class_pixel():
    bank = ReferenceBank(2, 2, capacity_per_class=8, dtype=torch.float32, ignore_index=None)
    bank.add(torch.randn(1, 2, 2, 2), torch.tensor([[[0, 1], [1, 1]]]))
    assert bank.class_counts().tolist() == [1, 3]
    with pytest.raises(ValueError, match=r"label 255, but labels must be in \[0, 2\)$"):
        bank.add(torch.randn(1, 2, 2, 2), torch.full((1, 2, 2), 255))


def test_ignore_index_pixels_are_dropped():
    bank = ReferenceBank(2, 2, capacity_per_class=100, dtype=torch.float32, ignore_index=255)
    masks = torch.full((1, 4, 4), 255)
    masks[0, 0, 0] = 1
    bank.add(torch.randn(1, 2, 4, 4), masks)
    assert bank.class_counts().tolist() == [0, 1]


def test_an_ignore_index_that_is_a_class_is_never_stored_nor_matched():
    """ignore_index=0 with classes 0..2: class 0 holds nothing, in a growable and a fixed
    bank alike, and class-wise scores agree with refmatch.classwise_max."""
    import refmatch
    bank = ReferenceBank(2, 3, capacity_per_class=10, dtype=torch.float32, metric="dot", ignore_index=0)
    bank.add(torch.randn(1, 2, 2, 2), torch.tensor([[[0, 0], [1, 2]]]))
    assert bank.class_counts().tolist() == [0, 1, 1]
    reference, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0, 1, 2])
    query = torch.tensor([[1.0, 0.1]])
    fixed = ReferenceBank.from_tensors(reference, labels, num_classes=3, metric="dot", ignore_index=0)
    assert fixed.match(query).label.tolist() == [1]
    expected = refmatch.classwise_max(query, reference, labels, 3, metric="dot", ignore_index=0)
    assert torch.equal(fixed.classwise_max(query), expected) and expected[0, 0] == float("-inf")


def test_rows_that_could_never_match_are_not_stored():
    """NaN or Inf features would take a slot (evicting good rows under the ring) and never match."""
    bank = ReferenceBank(2, 1, capacity_per_class=3, dtype=torch.float32, metric="dot")
    features = torch.randn(1, 2, 2, 2)
    features[0, 0, 0, 0], features[0, 1, 1, 1] = float("nan"), float("inf")
    bank.add(features, torch.zeros(1, 2, 2, dtype=torch.long))
    assert bank.class_counts().tolist() == [2] and bank.seen.tolist() == [2]
    assert bank.features[:2].isfinite().all()
    half = ReferenceBank(2, 1, capacity_per_class=3, dtype=torch.float16, metric="dot")
    half.add(torch.tensor([[[[1e5, 1.0]], [[1.0, 1.0]]]]), torch.zeros(1, 1, 2, dtype=torch.long))
    assert half.class_counts().tolist() == [1], "1e5 is Inf in the bank's float16"


def test_cosine_rows_are_stored_normalised():
    bank = ReferenceBank(3, 1, capacity_per_class=10, dtype=torch.float32)
    bank.add(3 * torch.ones(1, 3, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))
    torch.testing.assert_close(bank.features[0].norm(), torch.tensor(1.0))


def test_state_dict_round_trip():
    bank = ReferenceBank(4, 2, capacity_per_class=6)
    bank.add(torch.randn(2, 4, 3, 3), torch.randint(0, 2, (2, 3, 3)))
    copy = ReferenceBank(4, 2, capacity_per_class=6)
    copy.load_state_dict(bank.state_dict())
    query = torch.randn(5, 4)
    assert torch.equal(copy.match(query).index, bank.match(query).index)
    assert copy.class_counts().tolist() == bank.class_counts().tolist()


def test_a_fixed_banks_state_dict_does_not_load_into_a_growable_bank():
    fixed = ReferenceBank.from_tensors(torch.randn(3, 2), torch.tensor([2, 0, 1]), num_classes=3, metric="dot")
    growable = ReferenceBank(2, 3, capacity_per_class=1, dtype=torch.float32, metric="dot")
    with pytest.raises(RuntimeError, match="labels: from a bank made by from_tensors"):
        growable.load_state_dict(fixed.state_dict())
    assert growable.labels.tolist() == [0, 1, 2] and len(growable) == 0  # left as it was


def test_state_dict_with_impossible_counts_is_refused():
    bank = ReferenceBank(4, 3, capacity_per_class=10)
    bank.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    state = bank.state_dict()
    # A slot index past its class would take the next class's label; each bound on its own.
    for counts in ([11, 0, 3], [0, -1, 3]):
        state["counts"] = torch.tensor(counts)
        with pytest.raises(RuntimeError, match=re.escape(f"counts: {counts} stored features per class, but a "
                                                         "class holds 0 to 10")):
            bank.load_state_dict(state)
        assert bank.class_counts().tolist() == [4, 0, 0]


def test_match_returns_slot_classes_and_classwise_scores():
    bank = ReferenceBank(2, 3, capacity_per_class=4, dtype=torch.float32)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:, :, None, None]
    bank.add(features, torch.tensor([[[0]], [[2]]]))
    result = bank.match(torch.tensor([[0.1, 1.0], [1.0, 0.2]]))
    assert result.label.tolist() == [2, 0] and result.index.tolist() == [8, 0]
    scores = bank.classwise_max(torch.tensor([[0.0, 1.0]]))
    assert scores[0, 1].item() == float("-inf") and scores[0, 2].item() == pytest.approx(1.0)
    assert bank.memory_bytes() == 12 * 2 * 4 + 12 * 8 + 3 * 8 * 2 + 2 * 8  # features, labels, counts, settings


def test_l2_bank_takes_the_nearest_and_scores_an_empty_class_infinitely_far():
    bank = ReferenceBank(2, 3, capacity_per_class=4, dtype=torch.float32, metric="l2")
    features = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 3.0]])[:, :, None, None]
    bank.add(features, torch.tensor([[[0]], [[0]], [[2]]]))
    result = bank.match(torch.tensor([[0.1, 0.0], [4.0, 0.0], [0.0, 2.5]]))
    assert result.index.tolist() == [0, 1, 8] and result.label.tolist() == [0, 0, 2]
    torch.testing.assert_close(result.score, torch.tensor([0.01, 1.0, 0.25]))
    scores = bank.classwise_max(torch.tensor([[0.1, 0.0]]))
    assert scores[0, 1].item() == float("inf")
    torch.testing.assert_close(scores[0, [0, 2]], torch.tensor([0.01, 9.01]))


def test_ties_across_classes_take_the_lowest_slot():
    """One feature stored in classes 0, 1 and 2 (slots 0, 4, 8): the top-2 are slots 0 and 4."""
    bank = ReferenceBank(2, 3, capacity_per_class=4, dtype=torch.float32, metric="dot")
    bank.add(torch.ones(3, 2, 1, 1), torch.tensor([[[2]], [[1]], [[0]]]))
    found = bank.match(torch.ones(1, 2), k=2)
    assert found.index.tolist() == [[0, 4]] and found.label.tolist() == [[0, 1]]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("pixels", [(40, 9, 15, 0), (40, 40, 15, 0), (40, 0, 15, 9), (0, 0, 64, 0)],
                         ids=["copy", "one-run", "gap", "one-class"])
def test_filled_slots_match_as_the_whole_buffer(metric, k, pixels):
    """Matching only the filled slots (a view of them where they form one run, else a copy; l2 class
    by class) gives what a match over the whole buffer gives, whose empty slots' NaN never matches."""
    import refmatch
    torch.manual_seed(0)
    bank = ReferenceBank(6, 4, capacity_per_class=32, dtype=torch.float32, metric=metric, policy="reservoir")
    masks = torch.arange(4).repeat_interleave(torch.tensor(pixels))  # a class of 40 fills its 32 slots
    bank.add(torch.randn(1, 6, 8, 8), masks[torch.randperm(64)].view(1, 8, 8))
    maps = torch.randn(2, 6, 3, 5)
    found = bank.match(maps, k=k)
    whole = refmatch.match(maps, bank.features, bank.labels, k=k, metric=metric)
    assert torch.equal(found.index, whole.index) and torch.equal(found.label, whole.label)
    torch.testing.assert_close(found.score, whole.score)


def test_l2_bank_shifts_each_class_by_its_own_mean():
    """Classes around 0 and 1000 (D = 16): a shift by the whole bank's mean cancels the far class's
    digits (class-wise distances were 400 % off); class by class they are float32-close, for a
    growable bank and a from_tensors one alike. match's distances too: a growable bank matches
    class by class, a fixed one in one call whose distances are recomputed from the matched rows."""
    torch.manual_seed(0)
    near, far = torch.randn(300, 16), torch.randn(300, 16) + 1000
    growable = ReferenceBank(16, 2, 512, dtype=torch.float32, metric="l2")
    growable.add(torch.cat([near, far]).T.reshape(1, 16, 600, 1),
                 torch.tensor([0, 1]).repeat_interleave(300).view(1, 600, 1))
    fixed = ReferenceBank.from_tensors(torch.cat([far[:150], near, far[150:]]),
                                       torch.tensor([1, 0, 1]).repeat_interleave(torch.tensor([150, 300, 150])),
                                       metric="l2")
    query = far[:200] + 0.3 * torch.randn(200, 16)
    truth = torch.cdist(query.double(), far.double()).square()
    for bank in (growable, fixed):
        torch.testing.assert_close(bank.classwise_max(query)[:, 1].double(), truth.min(1).values, rtol=1e-5, atol=0)
        torch.testing.assert_close(bank.match(query).score.double(), truth.min(1).values, rtol=1e-5, atol=0)


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_ties_across_classes_take_the_lowest_slot_in_either_grouping(metric):
    """One feature in classes 2, 0 and 1 of a from_tensors bank (rows 0, 1, 2): the top-2 are rows 0
    and 1 whether the classes are matched at once (dot) or one by one (l2)."""
    bank = ReferenceBank.from_tensors(torch.ones(3, 2), torch.tensor([2, 0, 1]), metric=metric)
    found = bank.match(torch.ones(1, 2), k=2)
    assert found.index.tolist() == [[0, 1]] and found.label.tolist() == [[2, 0]]


def test_refresh_re_embeds_kept_images():
    bank = ReferenceBank(1, 1, capacity_per_class=8, dtype=torch.float32, metric="dot")
    images = torch.arange(4.0).reshape(4, 1, 1, 1)
    bank.add(images.clone(), torch.zeros(4, 1, 1, dtype=torch.long), images=images)
    bank.refresh(lambda batch: 10 * batch)
    assert stored(bank, 0) == [0.0, 10.0, 20.0, 30.0]


def test_a_failed_refresh_leaves_the_bank_as_it_was():
    bank = ReferenceBank(1, 2, capacity_per_class=8, dtype=torch.float32, metric="dot", policy="reservoir")
    images = torch.arange(4.0).reshape(4, 1, 1, 1)
    bank.add(images.clone(), torch.tensor([0, 1, 0, 1]).reshape(4, 1, 1), images=images)
    before = {name: buffer.clone() for name, buffer in bank.named_buffers()}
    with pytest.raises(ValueError, match="features have D=3 channels"):
        bank.refresh(lambda batch: batch.repeat(1, 3, 1, 1))
    for name, buffer in bank.named_buffers():
        torch.testing.assert_close(buffer, before[name], rtol=0, atol=0, equal_nan=True)
    bank.refresh(lambda batch: 10 * batch)  # the kept images are still there
    assert stored(bank, 0) == [0.0, 20.0] and stored(bank, 1) == [10.0, 30.0]


@pytest.mark.parametrize("call, error, message", [
    (lambda b: b.add(torch.randn(1, 5, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long)), ValueError, "D=5"),
    (lambda b: b.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long)), ValueError, "integer multiple"),
    (lambda b: b.add(torch.randn(2, 4, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long)), ValueError, r"\[B=2, H, W\]"),
    (lambda b: b.add(torch.randn(2, 4, 2, 2), torch.zeros(2, 1, 4, 4, dtype=torch.long)), ValueError,
     r"\[B=2, H, W\], got shape \(2, 1, 4, 4\): pass masks\[:, 0\]"),  # a channel axis, as MONAI keeps masks
    (lambda b: b.add(torch.randn(2, 4, 2, 2), torch.zeros(2, 1, 4, 4)), ValueError,
     r"pass masks\[:, 0\].long\(\) for a channel axis of one"),  # MONAI's float labels: the shape's hint first
    (lambda b: b.add(torch.randn(2, 4, 2, 2), torch.zeros(2, 3, 4, 4, dtype=torch.long)), ValueError,
     r"got shape \(2, 3, 4, 4\): one-hot masks\? pass masks.argmax\(1\)"),  # C = 3 channels
    (lambda b: b.add(torch.randn(1, 4, 2, 2), torch.full((1, 4, 4), 3)), ValueError, "label 3"),
    (lambda b: b.add(torch.randn(1, 4, 2, 2), torch.full((1, 4, 4), -1)), ValueError, "label -1"),
    (lambda b: b.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 4, 4)), TypeError, "integer class labels"),
    (lambda b: b.match(torch.randn(3, 4)), ValueError, "bank is empty"),
    (lambda b: b.match(torch.randn(3, 5)), ValueError, r"query has D=5 channels \(dim 1\), the bank holds D=4"),
    (lambda b: b.classwise_max(torch.randn(2, 5, 3, 3)), ValueError, "query has D=5 channels"),
    (lambda b: b.match(torch.randn(2, 3, 3, 4)), ValueError,  # channels last: the fix is named
     r"query has D=3 channels .*D=4; if it is \[B, H, W, D\] .*, .permute\(0, 3, 1, 2\)"),
    (lambda b: b.add(torch.randn(1, 2, 2, 4), torch.zeros(1, 2, 2, dtype=torch.long)), ValueError,
     r"features have D=2 channels, the bank holds D=4; if it is \[B, H, W, D\]"),
    (lambda b: b.match(torch.randn(1, 4, 2, 3, 3)), ValueError, r"a volume \[B, D, Z, H, W\] goes in as volume"),
    (lambda b: b.refresh(lambda x: x), RuntimeError, r"refresh needs images: .* \(a bank loaded from a state_dict"),
    (lambda b: b.match(torch.ones(3, 4, dtype=torch.long)), TypeError, "query must be floating point.*int64"),
    (lambda b: b.classwise_max(torch.ones(1, 4, 2, 2, dtype=torch.int32)), TypeError,
     "query must be floating point.*int32"),
])
def test_bad_input(call, error, message):
    bank = ReferenceBank(4, 3, capacity_per_class=5)
    if "query" in message or "a volume" in message:  # a query is checked after the bank has features
        bank.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(error, match=message):
        call(bank)


def test_a_bank_prints_its_settings_and_fill():
    bank = ReferenceBank(4, 3, capacity_per_class=5, metric="l2", policy="reservoir")
    bank.add(torch.randn(1, 4, 2, 2), torch.tensor([[[0, 0], [2, 255]]]))
    assert repr(bank) == ("ReferenceBank(dim=4, num_classes=3, capacity_per_class=5, policy='reservoir', metric='l2', "
                          "dtype=torch.bfloat16, ignore_index=255, held per class=[2, 0, 1])")
    fixed = ReferenceBank.from_tensors(torch.randn(3, 2), torch.tensor([1, 1, 0]))
    assert "num_classes=2, from tensors, metric='cosine'" in repr(fixed) and "held per class=[1, 2]" in repr(fixed)
    assert repr(bank.to("meta")).endswith("held per class=meta)"), "no host read of a meta bank's counts"


def test_bad_dtypes_are_named():
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        ReferenceBank(4, 3, 5, dtype=torch.int32)
    with pytest.raises(TypeError, match="reference must hold floating-point features, got torch.int64"):
        ReferenceBank.from_tensors(torch.randn(10, 4).long(), torch.zeros(10, dtype=torch.long))
    for labels in (torch.full((10,), 1.7), torch.ones(10, dtype=torch.bool)):
        with pytest.raises(TypeError, match="labels must have an integer dtype"):
            ReferenceBank.from_tensors(torch.randn(10, 4), labels)
    with pytest.raises(TypeError, match="ignore_index must be an int or None, got float"):
        ReferenceBank(4, 3, 5, ignore_index=255.0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="capacity_per_class"):
        ReferenceBank(4, 3, 0)
    with pytest.raises(ValueError, match="policy"):
        ReferenceBank(4, 3, 5, policy="fifo")
    with pytest.raises(ValueError, match="downsample must be one of .*got 'bilinear'"):
        ReferenceBank(4, 3, 5, downsample="bilinear")

    for label in (2 ** 70, -(2 ** 63)):  # int64 overflow, and a value whose negation is itself
        with pytest.raises(ValueError, match="ignore_index must be a label within"):
            ReferenceBank(4, 3, 5, ignore_index=label)


def test_an_l2_banks_tie_across_classes_goes_to_the_lower_class():
    """l2 banks match class by class and merge: equal distances keep the lower class's slot."""
    bank = ReferenceBank(2, 2, capacity_per_class=1, dtype=torch.float32, metric="l2")
    bank.add(torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]]), torch.tensor([[[0, 1]]]))  # rows (0, 0) and (2, 0)
    found = bank.match(torch.tensor([[1.0, 0.0]]))  # at distance 1 from both
    assert found.index.tolist() == [0] and found.label.tolist() == [0] and found.score.tolist() == [1.0]


def test_the_ring_warns_only_when_one_add_overflows_a_class():
    for rows, warns in ((3, False), (4, True)):
        bank = ReferenceBank(2, 1, capacity_per_class=3, dtype=torch.float32, metric="dot")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bank.add(torch.randn(1, 2, 1, rows), torch.zeros(1, 1, rows, dtype=torch.long))
        assert any("policy='ring' keeps" in str(warning.message) for warning in caught) == warns
