"""ignore_index: references with that label never match, in every op and backend."""
import pytest
import torch

import refmatch
from conftest import BACKENDS, DEVICE, HAS_CUDA

IGNORE = 255


def _bank(m=90, d=8, classes=3):
    reference = torch.randn(m, d, device=DEVICE)
    labels = torch.randint(0, classes, (m,), device=DEVICE)
    labels[torch.arange(m, device=DEVICE) % 4 == 1] = IGNORE
    return reference, labels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("k", [1, 5])
def test_match_equals_match_on_the_kept_rows(backend, metric, k):
    reference, labels = _bank()
    query = torch.randn(21, 8, device=DEVICE)
    result = refmatch.match(query, reference, labels, k=k, metric=metric, backend=backend, ignore_index=IGNORE)
    kept = (labels != IGNORE).nonzero()[:, 0]
    expected = refmatch.match(query.double(), reference[kept].double(), labels[kept], k=k, metric=metric)
    assert torch.equal(result.index, kept[expected.index])
    assert torch.equal(result.label, expected.label)
    torch.testing.assert_close(result.score.double(), expected.score, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_with_only_ignored_candidates_get_minus_one(backend):
    reference, labels = _bank(m=10)
    labels[:] = IGNORE
    labels[[2, 7]] = 1
    result = refmatch.match(torch.randn(4, 8, device=DEVICE), reference, labels, k=3, backend=backend,
                            ignore_index=IGNORE)
    assert (result.index[:, 2] == -1).all() and (result.label[:, 2] == -1).all()
    assert (result.score[:, 2] == float("-inf")).all()
    assert set(result.index[0, :2].tolist()) == {2, 7}
    labels[:] = IGNORE
    alone = refmatch.match(torch.randn(4, 8, device=DEVICE), reference, labels, metric="l2", backend=backend,
                           ignore_index=IGNORE)
    assert (alone.index == -1).all() and (alone.score == float("inf")).all()


@pytest.mark.parametrize("backend", BACKENDS + (["cuda"] if HAS_CUDA else []))
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("grouped", [False, True])
def test_classwise_max_skips_ignored_references(backend, metric, grouped):
    reference, labels = _bank()
    if grouped:  # classes in ascending blocks, ignored rows left where they are (ReferenceBank's layout)
        kept = labels != IGNORE
        labels[kept] = labels[kept].sort().values
    query = torch.randn(13, 8, device=DEVICE)
    scores = refmatch.classwise_max(query, reference, labels, 3, metric=metric, backend=backend,
                                    ignore_index=IGNORE)
    kept = labels != IGNORE
    expected = refmatch.classwise_max(query, reference[kept], labels[kept], 3, metric=metric, backend="torch")
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_vote_gives_ignored_labels_no_vote():
    result = refmatch.MatchResult(torch.tensor([[0.9, 0.8, 0.7]]), torch.tensor([[4, 1, 2]]),
                                  torch.tensor([[IGNORE, 1, 1]]))
    voted = refmatch.vote(result, num_classes=2, weighting="uniform", ignore_index=IGNORE)
    assert voted.probabilities.tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="labels must be < num_classes=2"):
        refmatch.vote(result, num_classes=2, weighting="uniform")


def test_ignore_index_is_compared_by_value_in_small_label_dtypes():
    # torch's == casts the number to the tensor's dtype: uint8 255 == -1 and int8 -1 == 255.
    query = torch.randn(4, 8)
    reference = torch.randn(6, 8)
    reference[0] = 5 * query[0]
    labels = torch.tensor([255, 1, 1, 1, 1, 0], dtype=torch.uint8)
    found = refmatch.match(query, reference, labels, ignore_index=-1)
    assert found.index[0].item() == 0 and found.label[0].item() == 255  # 255 is a label here
    assert refmatch.vote(found, num_classes=256, ignore_index=-1).probabilities[0, 255].item() == 1.0
    with pytest.raises(ValueError, match="labels must be >= 0"):
        refmatch.match(query, reference, labels.to(torch.int8), ignore_index=255)
    bank = refmatch.ReferenceBank(dim=8, num_classes=2, capacity_per_class=8, ignore_index=255)
    masks = torch.tensor([[[0, -1], [1, 1]]], dtype=torch.int8)
    with pytest.raises(ValueError, match="masks hold label -1"):
        bank.add(torch.randn(1, 8, 2, 2), masks)
