"""ReferenceBank.from_tensors: a fixed bank over given rows (ignored labels, num_classes, no writes)."""
import pytest
import torch

import refmatch
from refmatch import ReferenceBank


def test_fixed_bank_from_tensors():
    reference, labels = torch.randn(9, 3), torch.tensor([0, 1, 2] * 3)
    bank = ReferenceBank.from_tensors(reference, labels)
    query = torch.randn(4, 3)
    assert torch.equal(bank.match(query).index, refmatch.match(query, reference).index)
    with pytest.raises(RuntimeError, match="fixed"):
        bank.add(torch.randn(1, 3, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long))


def test_fixed_bank_rows_labelled_ignore_index_never_match():
    reference, labels = torch.randn(12, 3), torch.tensor([0, 1, 2, 255] * 3)
    query = torch.randn(5, 3)
    for num_classes in (None, 3):
        bank = ReferenceBank.from_tensors(reference, labels, num_classes=num_classes, ignore_index=255)
        assert bank.num_classes == 3 and len(bank) == 9
        found = bank.match(query, k=9)  # every row not ignored, so none of the 255 rows
        assert (found.label != 255).all() and (found.index % 4 != 3).all()
        torch.testing.assert_close(bank.classwise_max(query),
                                   refmatch.classwise_max(query, reference, labels, 3, ignore_index=255))
    with pytest.raises(ValueError, match="k must satisfy 1 <= k <= 9"):
        bank.match(query, k=10)


@pytest.mark.parametrize("labels, num_classes, message", [
    (torch.tensor([0, 1, 2]), 0, "num_classes must be a positive int, got 0"),
    (torch.tensor([0, 1, 2]), 2, "labels must be < num_classes=2"),
    (torch.tensor([0, -1, 2]), None, "labels must be >= 0"),
    (torch.tensor([255, 255, 255]), None, "none of the 3 labels differs from ignore_index=255"),
    (torch.tensor([0, 2 ** 40, 1]), None, "one label is 1099511627776 .ignore_index=255.: pass the ignore_index"),
])
def test_fixed_bank_num_classes_errors(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        ReferenceBank.from_tensors(torch.randn(3, 2), labels, num_classes=num_classes)


def test_fixed_bank_infers_its_classes_up_to_65536():
    assert ReferenceBank.from_tensors(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)).num_classes == 1
    assert ReferenceBank.from_tensors(torch.randn(2, 3), torch.tensor([0, 65535])).num_classes == 65536
    with pytest.raises(ValueError, match="one label is 65536"):
        ReferenceBank.from_tensors(torch.randn(2, 3), torch.tensor([0, 65536]))


def test_fixed_bank_with_every_row_ignored_says_so():
    bank = ReferenceBank.from_tensors(torch.randn(3, 2), torch.full((3,), 255), num_classes=2)
    with pytest.raises(ValueError, match="from_tensors was given no row labelled other than ignore_index"):
        bank.match(torch.randn(1, 2))


def test_fixed_bank_never_writes_the_callers_tensors():
    reference, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    original = reference.clone(), labels.clone()
    bank = ReferenceBank.from_tensors(reference, labels)
    for call in (bank.clear, lambda: bank.refresh(lambda images: images)):
        with pytest.raises(RuntimeError, match="fixed: it takes no add"):
            call()
    bank.load_state_dict({"features": torch.zeros(4, 3), "labels": torch.ones(4, dtype=torch.long),
                          "counts": torch.tensor([0, 4]), "seen": torch.tensor([0, 4])})
    assert torch.equal(reference, original[0]) and torch.equal(labels, original[1])
