"""The public ops under PyTorch's machinery: meta and fake tensors, make_fx, opcheck, autograd,
torch.compile."""
import pytest
import torch

import refmatch
from conftest import BACKENDS, DEVICE

pytestmark = pytest.mark.usefixtures("both_cpu_walks")  # the CPU fused top-k and the torch walk


def test_meta_tensors_give_result_shapes():
    """Shape inference (meta tensors) runs the public calls without reading label values."""
    maps, reference = torch.empty(2, 8, 3, 5, device="meta"), torch.empty(20, 8, device="meta")
    labels = torch.empty(20, dtype=torch.long, device="meta")
    assert refmatch.match(maps, reference, labels, k=3, ignore_index=255).label.shape == (2, 3, 3, 5)
    scores = refmatch.classwise_max(maps, reference, labels, 4)
    assert scores.shape == (2, 4, 3, 5) and scores.is_meta
    probabilities, confidence = refmatch.vote(scores, num_classes=4)
    assert probabilities.shape == (2, 4, 3, 5) and confidence.shape == (2, 3, 5)


def test_results_carry_no_gradient():
    query = torch.randn(4, 8, requires_grad=True)
    result = refmatch.match(query, torch.randn(6, 8))
    assert not result.score.requires_grad


def test_opcheck_each_registered_op():
    maps = torch.randn(2, 8, 3, 5, device=DEVICE)
    reference = torch.randn(20, 8, device=DEVICE)
    ignored = torch.arange(20, device=DEVICE) % 3 == 0
    labels = torch.randint(0, 3, (20,), device=DEVICE)
    for backend in BACKENDS:
        match_op = getattr(torch.ops.refmatch, f"match_{backend}")
        classwise_op = getattr(torch.ops.refmatch, f"classwise_max_{backend}")
        torch.library.opcheck(match_op, (maps, reference, None, 1, "l2"))
        torch.library.opcheck(match_op, (maps, reference, ignored, 3, "cosine"))
        torch.library.opcheck(classwise_op, (maps, reference, labels, ignored, 3, "dot"))


def test_fake_tensors_trace_without_host_reads():
    """Under FakeTensorMode (shape inference) and make_fx, the label check, l2's shift and
    vote's score checks read values a fake tensor does not have: they are skipped, as under
    torch.compile (they raised DataDependentOutputException)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    query, reference, labels = torch.randn(7, 8), torch.randn(20, 8), torch.randint(0, 3, (20,))
    with FakeTensorMode() as mode:
        fake_query, fake_reference, fake_labels = map(mode.from_tensor, (query, reference, labels))
        assert refmatch.match(fake_query, fake_reference, fake_labels).label.shape == (7,)
        assert refmatch.match(fake_query, fake_reference, metric="l2", k=3).index.shape == (7, 3)
        per_class = refmatch.classwise_max(fake_query, fake_reference, fake_labels, 3)
        assert refmatch.vote(per_class, num_classes=3).probabilities.shape == (7, 3)
    traced = make_fx(lambda q, r, l: refmatch.match(q, r, l, metric="l2").label, tracing_mode="fake")(
        query, reference, labels)
    assert torch.equal(traced(query, reference, labels), refmatch.match(query, reference, labels, metric="l2").label)


def test_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="aot_eager")  # traces the fake impls
    def pseudo_labels(features, bank, bank_labels):
        # The label check's host read is skipped while compiling.
        return refmatch.match(features, bank, bank_labels, metric="cosine", ignore_index=2).label + 0

    @torch.compile(fullgraph=True, backend="aot_eager")
    def soft_labels(features, bank, bank_labels):
        per_class = refmatch.classwise_max(features, bank, bank_labels, 3)
        top = refmatch.match(features, bank, k=4)
        return (refmatch.vote(per_class, num_classes=3).probabilities,
                refmatch.vote(top, bank_labels, num_classes=3, ignore_index=2).probabilities)

    maps = torch.randn(2, 8, 3, 5)
    bank, bank_labels = torch.randn(20, 8), torch.randint(0, 3, (20,))
    expected = refmatch.match(maps, bank, bank_labels, ignore_index=2).label
    assert torch.equal(pseudo_labels(maps, bank, bank_labels), expected)
    from_classes, from_top = soft_labels(maps, bank, bank_labels)
    torch.testing.assert_close(from_classes, refmatch.vote(refmatch.classwise_max(maps, bank, bank_labels, 3),
                                                           num_classes=3).probabilities)
    torch.testing.assert_close(from_top, refmatch.vote(refmatch.match(maps, bank, k=4), bank_labels, num_classes=3,
                                                       ignore_index=2).probabilities)
