"""refmatch.classwise_max against the float64 oracle; its inputs and backend choice."""
import pytest
import torch

import refmatch
from conftest import DEVICE, FUSED, HAS_CUDA
from oracle import dense_scores, tolerance

CASES = [("torch", dtype) for dtype in (torch.bfloat16, torch.float32, torch.float64)]
CASES += [(backend, dtype) for backend in FUSED + (["cuda"] if HAS_CUDA else [])
          for dtype in (torch.bfloat16, torch.float32)]
pytestmark = pytest.mark.usefixtures("both_cpu_walks")  # the CPU fused top-k and the torch walk


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("backend, dtype", CASES)
@pytest.mark.parametrize("n, m, d, classes, grouped", [
    (1, 1, 1, 1, False), (33, 257, 7, 5, False), (33, 257, 7, 5, True), (70, 40, 33, 64, False)])
def test_matches_oracle(metric, backend, dtype, n, m, d, classes, grouped):
    query = torch.randn(n, d, device=DEVICE).to(dtype)
    reference = torch.randn(m, d, device=DEVICE).to(dtype)
    labels = torch.randint(0, classes, (m,), device=DEVICE)
    if grouped:  # as ReferenceBank stores them: most tiles hold one class
        labels = labels.sort().values
    scores = refmatch.classwise_max(query, reference, labels, classes, metric=metric, backend=backend).cpu()
    query, reference, labels = query.cpu(), reference.cpu(), labels.cpu()
    dense = dense_scores(query.double(), reference.double(), metric)
    worst = float("inf") if metric == "l2" else float("-inf")
    for cls in range(classes):
        columns = dense[:, labels == cls]
        if columns.shape[1] == 0:
            assert (scores[:, cls] == worst).all()
            continue
        expected = columns.min(1).values if metric == "l2" else columns.max(1).values
        atol = tolerance(query, reference[labels == cls], metric)  # 2x plain torch's float32-accumulated error
        torch.testing.assert_close(scores[:, cls].double(), expected, atol=atol, rtol=0)


def test_maps_give_b_c_h_w_and_agree_with_match():
    maps, reference = torch.randn(2, 6, 5, 4), torch.randn(30, 6)
    labels = torch.randint(0, 3, (30,))
    scores = refmatch.classwise_max(maps, reference, labels, 3)
    assert scores.shape == (2, 3, 5, 4)
    best = refmatch.match(maps, reference, labels)
    torch.testing.assert_close(scores.max(dim=1).values, best.score)
    assert torch.equal(scores.argmax(dim=1), best.label)


def test_nan_references_never_count():
    reference = torch.randn(10, 4)
    reference[3] = float("nan")
    labels = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    scores = refmatch.classwise_max(torch.randn(2, 4), reference, labels, 2, metric="dot")
    assert (scores[:, 1] == float("-inf")).all() and torch.isfinite(scores[:, 0]).all()


@pytest.mark.parametrize("labels, classes, message", [
    (torch.tensor([0, 1, 3]), 3, "labels must be < num_classes=3, got 3: pass num_classes=4, or ignore_index=3 if"),
    (torch.tensor([0, -1, 1]), 3, "labels must be >= 0, got -1"),
    (torch.tensor([0, 1, 1]), 0, "num_classes must be a positive int"),
    (None, 3, "labels are required"),
])
def test_bad_labels(labels, classes, message):
    with pytest.raises(ValueError, match=message):
        refmatch.classwise_max(torch.randn(2, 4), torch.randn(3, 4), labels, classes)


def test_fused_backends_decline_with_reasons():
    query, reference = torch.randn(2, 4, device=DEVICE), torch.randn(70, 4, device=DEVICE)
    labels = torch.arange(70, device=DEVICE)
    with pytest.raises(ValueError, match="at most 64 classes, got num_classes=70|no usable device|not built"):
        refmatch.classwise_max(query, reference, labels, 70, backend="cuda")
    if FUSED:
        with pytest.raises(ValueError, match="at most 64 classes, got num_classes=70"):
            refmatch.classwise_max(query, reference, labels, 70, backend="triton")


@pytest.mark.torch_walk_only
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_blocks_of_one_class_take_the_row_max_path(metric):
    from refmatch.backends.torch_classwise import classwise_chunked

    query, reference = torch.randn(9, 5), torch.randn(100, 5)
    labels = torch.randint(0, 4, (100,)).sort().values  # most 16-row blocks hold one class
    reference[37] = float("nan")
    maps = query.T[None, :, :, None]
    grouped = classwise_chunked(maps, reference, labels, None, 4, metric, block_m=16)
    mixed = classwise_chunked(maps, reference, labels, None, 4, metric, block_m=128)  # one mixed block
    torch.testing.assert_close(grouped, mixed)


@pytest.mark.parametrize("backend", ["torch"] + FUSED)
def test_l2_distances_are_never_negative_and_top_k_comes_sorted(backend):
    """Features around 100 in float16 (not shifted): q.q - 2 q.r + r.r cancels, so the
    distances are recomputed from the matched rows; class-wise minima are clamped at 0."""
    generator = torch.Generator().manual_seed(3)
    reference = (100 + torch.randn(300, 16, generator=generator)).half().to(DEVICE)
    query = torch.cat([reference[:100], reference[100:200] + 0.05])
    labels = torch.arange(300, device=DEVICE) % 3
    found = refmatch.match(query, reference, k=5, metric="l2", backend=backend)
    assert (found.score[:, 1:] >= found.score[:, :-1]).all() and (found.score >= 0).all()
    assert (refmatch.classwise_max(query, reference, labels, 3, metric="l2", backend=backend) >= 0).all()


def test_each_class_copy_is_freed_before_the_next_is_gathered(monkeypatch):
    """With labels not stored class by class, the CPU walk and a from_tensors bank copy one class
    at a time, but the loop kept the last copy while the next was gathered: two classes at once,
    the whole bank at C = 2 (512 MiB for a 512 MiB bank in a memory review)."""
    import weakref

    from refmatch.backends import torch_classwise
    from refmatch.bank import ReferenceBank

    copies = []

    def gathered_once_freed():
        assert all(copy() is None for copy in copies), "an earlier class's copy is still alive"

    def gathered_classes(*args):
        for cls, part, ignored in gather(*args):
            copies.append(weakref.ref(part))
            yield cls, part, ignored
            del part
            gathered_once_freed()

    def class_rows(bank, cls, counts=None):
        gathered_once_freed()
        rows = select(bank, cls, counts)
        copies.append(weakref.ref(rows))
        return rows

    gather, select = torch_classwise._gathered_classes, ReferenceBank._class_rows
    monkeypatch.setattr(torch_classwise, "_gathered_classes", gathered_classes)
    monkeypatch.setattr(ReferenceBank, "_class_rows", class_rows)
    query, reference = torch.randn(20, 8), torch.randn(300, 8)
    labels = torch.arange(300) % 3  # interleaved classes: gathered copies
    expected = refmatch.classwise_max(query.double(), reference.double(), labels, 3).float()
    walked = refmatch.classwise_max(query, reference, labels, 3, backend="torch")
    walked_copies = len(copies)
    torch.testing.assert_close(walked, expected)
    torch.testing.assert_close(ReferenceBank.from_tensors(reference, labels).classwise_max(query), expected)
    assert walked_copies in (0, 3) and len(copies) == walked_copies + 3  # 0: no fused walk on this CPU
