"""ReferenceBank's input checks (``bank_checks``): each refuses by name, before the bank
changes, so a refused call or load leaves it as it was."""
import warnings

import pytest
import torch

from refmatch import PseudoLabeler, ReferenceBank


def filled_bank(**options):
    bank = ReferenceBank(dim=4, num_classes=2, capacity_per_class=8, dtype=torch.float32, **options)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, :, 2:] = 1
    bank.add(torch.randn(2, 4, 4, 4), masks)
    return bank


def snapshot(bank):
    return {name: buffer.clone() for name, buffer in bank.state_dict().items()}, len(bank._sources)


def assert_unchanged(bank, before):
    buffers, sources = before
    assert len(bank._sources) == sources
    for name, buffer in bank.state_dict().items():
        assert torch.equal(buffer.nan_to_num(-7.0), buffers[name].nan_to_num(-7.0)), name


def test_a_state_dict_of_another_shape_loads_nothing():
    """torch skips a buffer of the wrong shape but would load the counts beside it: a bank
    claiming features it does not hold."""
    bank = ReferenceBank(dim=4, num_classes=2, capacity_per_class=8)
    before = snapshot(bank)
    other = ReferenceBank(dim=8, num_classes=2, capacity_per_class=8)
    other.add(torch.randn(1, 8, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"features: saved with shape \(16, 8\), this bank's is \(16, 4\)"):
        bank.load_state_dict(other.state_dict())
    assert_unchanged(bank, before)


def test_a_state_dict_of_another_metric_policy_or_capacity_is_refused_by_what_differs():
    bank = filled_bank(metric="l2")
    before = snapshot(bank)
    with pytest.raises(RuntimeError, match="settings: saved by a bank with metric='cosine', policy='ring', this one "
                                           "has metric='l2', policy='ring'"):
        bank.load_state_dict(filled_bank().state_dict())  # cosine rows are normalised: l2 would misread them
    with pytest.raises(RuntimeError, match="policy='reservoir', this one has metric='l2', policy='ring'"):
        bank.load_state_dict(filled_bank(metric="l2", policy="reservoir").state_dict(), strict=False)
    smaller = ReferenceBank(dim=4, num_classes=2, capacity_per_class=4, metric="l2")
    with pytest.raises(RuntimeError, match=r"features: saved with shape \(8, 4\), this bank's is \(16, 4\) "
                                           r"\(another dim, num_classes or capacity_per_class\): saved 2 x 4 "
                                           r"slots of dim 4, this bank 2 x 8 slots of dim 4 \(classes x "
                                           r"capacity_per_class\)"):
        bank.load_state_dict(smaller.state_dict())
    assert_unchanged(bank, before)


@pytest.mark.parametrize("images, message", [
    ([torch.zeros(3, 8, 8)] * 2, "got list"), (torch.zeros(3, 1, 8, 8), "got shape \\(3, 1, 8, 8\\)")])
def test_images_for_refresh_are_checked_before_anything_is_stored(images, message):
    bank = filled_bank()
    before = snapshot(bank)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=f"images must be None or a tensor of B=2 inputs.*{message}"):
        bank.add(torch.randn(2, 4, 4, 4), masks, images=images)
    assert_unchanged(bank, before)


def test_feature_maps_without_pixels_are_refused_by_name():
    bank = filled_bank()
    with pytest.raises(ValueError, match="features must have sides >= 1"):
        bank.add(torch.randn(1, 4, 0, 2), torch.zeros(1, 0, 2, dtype=torch.long))


def test_an_empty_class_scores_in_the_banks_result_dtype():
    """Not torch's default dtype: on a sharded bank, ranks summing float32 and float64 would
    break the all_reduce."""
    bank = ReferenceBank(dim=4, num_classes=3, capacity_per_class=8, dtype=torch.float32)
    bank.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        scores = bank.classwise_max(torch.randn(5, 4))
    finally:
        torch.set_default_dtype(previous)
    assert scores.dtype == torch.float32 and (scores[:, 1:] == float("-inf")).all()


def test_agreement_labels_are_checked_after_the_banks_call(monkeypatch):
    """On a sharded bank every rank must reach the bank's collectives: a rank refusing its
    agree_with before them would leave the others waiting."""
    bank = filled_bank()
    calls, match = [], bank.match
    monkeypatch.setattr(bank, "match", lambda *args, **kwargs: calls.append(1) or match(*args, **kwargs))
    with pytest.raises(TypeError, match="agree_with must hold integer labels"):
        PseudoLabeler(bank, mode="hard")(torch.randn(2, 4, 4, 4), agree_with=torch.zeros(2, 4, 4))
    assert calls == [1]


def test_meta_tensors_are_refused_by_name():
    """What a bank keeps depends on values: meta tensors get a ValueError naming the input,
    not an error from deep inside torch (nonzero, item)."""
    bank = ReferenceBank(dim=8, num_classes=3, capacity_per_class=10)
    meta_features, meta_masks = torch.empty(2, 8, 4, 4, device="meta"), torch.zeros(2, 8, 8, dtype=torch.long,
                                                                                      device="meta")
    with pytest.raises(ValueError, match="features is a meta tensor"):
        bank.add(meta_features, meta_masks)
    bank.add(torch.randn(2, 8, 4, 4), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="query is a meta tensor"):
        bank.match(torch.empty(5, 8, device="meta"))
    with pytest.raises(ValueError, match="bank is a meta tensor"):
        bank.to("meta").classwise_max(torch.randn(5, 8))
    with pytest.raises(ValueError, match="reference is a meta tensor"):
        ReferenceBank.from_tensors(torch.empty(20, 8, device="meta"), torch.zeros(20, dtype=torch.long,
                                                                                   device="meta"), num_classes=3)


@pytest.mark.parametrize("call, error, message", [
    (lambda bank: bank.match(torch.randn(2, 4), k="2"), TypeError, "k must be an int, got str"),
    (lambda bank: bank.add(torch.ones(1, 4, 2, 2, dtype=torch.int64), torch.zeros(1, 2, 2, dtype=torch.long)),
     TypeError, "features must be floating point"),
    (lambda bank: ReferenceBank.from_tensors(torch.randn(10, 0), torch.zeros(10, dtype=torch.long)),
     ValueError, r"reference must have D >= 1 channels, got shape \(10, 0\)"),
    (lambda bank: PseudoLabeler(None), TypeError, "bank must be a ReferenceBank"),
    (lambda bank: PseudoLabeler(bank)(torch.randn(2, 4, 4, 4), agree_with=torch.zeros(2, 4, 4, dtype=torch.long,
                                                                                       device="meta")),
     ValueError, "agree_with is on meta, the pseudo-labels on cpu"),
])
def test_bad_arguments_are_refused_by_name(call, error, message):
    bank = filled_bank()
    before = snapshot(bank)
    with pytest.raises(error, match=message):
        call(bank)
    assert_unchanged(bank, before)


def test_a_float64_bank_stores_its_features_unrounded():
    bank = ReferenceBank(dim=2, num_classes=1, capacity_per_class=4, dtype=torch.float64, metric="dot")
    row = torch.tensor([1 + 1e-12, 0.1], dtype=torch.float64)
    bank.add(row.reshape(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))
    assert torch.equal(bank.features[0], row)


def test_classes_lost_before_storing_are_named_in_a_warning():
    """A 2-pixel band (class 2) and a 4x4 nodule off the block grid (class 3) at 16x16 features
    of 64x64 masks: no block holds a majority of either."""
    masks = torch.zeros(1, 64, 64, dtype=torch.long)
    masks[:, 20:40, 8:56] = 1
    masks[:, 28:30, :] = 2  # rows a block centre (4i + 2) never reads
    masks[:, 46:50, 46:50] = 3
    bank = ReferenceBank(dim=4, num_classes=4, capacity_per_class=64, dtype=torch.float32)
    with pytest.warns(UserWarning, match=r"class\(es\) \[2, 3\] of the masks kept no pixel at the features' 16x16"):
        bank.add(torch.randn(1, 4, 16, 16), masks)
    assert bank.class_counts().tolist()[2:] == [0, 0]
    features = torch.randn(1, 4, 16, 16)
    features[:, :, 5:10] = float("nan")  # class 1's rows
    with pytest.warns(UserWarning, match=r"class\(es\) \[1\]: every feature row held NaN or Inf"):
        ReferenceBank(dim=4, num_classes=2, capacity_per_class=64).add(features, masks.clamp(max=1))
    ignored = torch.full((1, 8, 8), 255)  # ignored pixels count for no class: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bank.add(torch.randn(1, 4, 8, 8), ignored)
    outvoted = torch.full((1, 16, 16), 255)
    outvoted[0, 0, 0] = 2  # one pixel of its 4x4 block: the ignored ones outvote it
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] .*outnumbered or tied in every block \(by another "
                                         r"class or by ignored pixels\)"):
        ReferenceBank(dim=8, num_classes=3, capacity_per_class=100).add(torch.randn(1, 8, 4, 4), outvoted)
    nearest = ReferenceBank(dim=4, num_classes=4, capacity_per_class=64, downsample="nearest")
    # not "use nearest" again, nor a majority's "outnumbered"
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] .*never at the pixel a block takes; .*tap_size\), or "
                                         r"downsample='labelled' for sparse labels \(ignored pixels abstain\)$"):
        nearest.add(torch.randn(1, 4, 16, 16), masks)


def test_finite_rows_that_overflow_the_banks_dtype_are_counted_in_a_warning():
    """A float16 l2 bank of features near 1e5: 6 of class 1's 8 rows became Inf and were dropped
    in silence (only a class that lost every row was named)."""
    features = torch.ones(1, 4, 4, 4)
    features[0, :, :2, :3] = 1e5
    masks = torch.ones(1, 4, 4, dtype=torch.long)
    masks[0, 2:] = 0
    bank = ReferenceBank(dim=4, num_classes=2, capacity_per_class=16, dtype=torch.float16, metric="l2")
    with pytest.warns(UserWarning, match=r"6 finite feature row\(s\) overflowed the bank's torch.float16 \(values "
                                         r"beyond 6.55e\+04\) and were not stored"):
        bank.add(features, masks)
    assert bank.class_counts().tolist() == [8, 2]
    features[0, :, 2:] = 1e5  # every row of both classes overflows: one warning, not also "NaN or Inf"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank.add(features, masks)
    assert [str(warning.message)[:34] for warning in caught] == ["14 finite feature row(s) overflowe"]


def test_a_bank_built_under_inference_mode_names_the_cause_outside_it():
    with torch.inference_mode():
        bank = ReferenceBank(dim=4, num_classes=2, capacity_per_class=8)
    with pytest.raises(RuntimeError, match=r"built under torch.inference_mode\(\), whose tensors cannot change"):
        bank.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with torch.inference_mode():  # inside the mode it works
        bank.add(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert len(bank) == 4


def test_memory_bytes_counts_the_images_kept_for_refresh():
    bank = ReferenceBank(dim=4, num_classes=2, capacity_per_class=8, dtype=torch.float32)
    buffers = bank.memory_bytes()
    bank.add(torch.randn(2, 4, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), images=torch.zeros(2, 1, 4, 4))
    assert bank.memory_bytes() == buffers + 2 * 16 * 4 + 2 * 16 * 8  # the images (float32) and masks (int64)


def test_bank_warnings_point_at_the_users_line():
    """The bank's warnings (here a lost class, and the ring's overflow in add) name the line
    that called add() or refresh(), not bank.py."""
    masks = torch.zeros(1, 64, 64, dtype=torch.long)
    masks[:, 30:32, :] = 1  # a 2-pixel band: no 16x16 feature pixel keeps it
    bank = ReferenceBank(dim=4, num_classes=2, capacity_per_class=64)
    images = torch.randn(1, 1, 64, 64)
    with pytest.warns(UserWarning, match="kept no pixel") as added:
        bank.add(torch.randn(1, 4, 16, 16), masks, images=images)
    with pytest.warns(UserWarning, match="kept no pixel") as refreshed:
        bank.refresh(lambda batch: torch.randn(1, 4, 16, 16))
    assert {warning.filename for warning in (*added, *refreshed)} == {__file__}


class _TaggedTensor(torch.Tensor):
    """A tensor subclass as MONAI's MetaTensor is: torch.load(weights_only=True) refuses it."""


def test_a_bank_of_subclassed_tensors_saves_plain_tensors(tmp_path):
    """from_tensors kept MONAI's MetaTensor as the buffers' type, so a checkpoint holding the bank
    failed torch.load(weights_only=True) in a process without MONAI."""
    reference, labels = torch.randn(6, 4).as_subclass(_TaggedTensor), torch.tensor([0, 1, 0, 1, 1, 0])
    fixed = ReferenceBank.from_tensors(reference, labels.as_subclass(_TaggedTensor), num_classes=2)
    grown = ReferenceBank(dim=4, num_classes=2, capacity_per_class=8)
    grown.add(torch.randn(1, 4, 2, 2).as_subclass(_TaggedTensor), torch.zeros(1, 2, 2, dtype=torch.long),
              images=torch.zeros(1, 1, 2, 2).as_subclass(_TaggedTensor))
    for bank in (fixed, grown):
        path = tmp_path / "bank.pt"
        torch.save(bank.state_dict(), path)
        assert all(type(value) is torch.Tensor for value in torch.load(path, weights_only=True).values())


def test_queries_too_large_for_a_float16_bank():
    """Features of 1e5 (float16 stops at 65504): add() stores cosine rows normalised, but queries
    were cast as they were, became Inf and matched nothing. Cosine queries are scaled by a power
    of two first; a dot or l2 bank says how many query rows it loses."""
    features = 1e5 * torch.randn(1, 8, 4, 4)
    masks = torch.arange(2).repeat_interleave(8).view(1, 4, 4)
    cosine = ReferenceBank(8, 2, 16, dtype=torch.float16)
    cosine.add(features, masks)
    assert torch.equal(cosine.match(features).label, masks)
    assert cosine.classwise_max(features).isfinite().all()
    for metric in ("dot", "l2"):  # Inf rows match anything (dot) or nothing (l2)
        bank = ReferenceBank(8, 2, 16, dtype=torch.float16, metric=metric)
        bank.add(features / 1e3, masks)
        with pytest.warns(UserWarning, match=r"16 finite query row\(s\) overflowed the bank's torch.float16 "
                                             r"\(values beyond 6.55e\+04\) to Inf, .*use metric='cosine'"):
            bank.match(features)
