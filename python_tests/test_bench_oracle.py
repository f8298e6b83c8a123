"""The benchmark's float64 oracle and agreement checks: they must fail wrong answers."""
import torch

import refmatch
from refmatch.bench_oracle import Float64Oracle


def inputs():
    generator = torch.Generator().manual_seed(0)
    query, reference = torch.randn(50, 16, generator=generator), torch.randn(300, 16, generator=generator)
    return query, reference, torch.arange(300) * 4 // 300


def test_top_slots_and_class_maxima_are_the_dense_float64_ones():
    query, reference, labels = inputs()
    oracle = Float64Oracle(query, reference, labels, 4, chunk_bytes=8 * 300 * 7)  # chunks of 7 rows
    dense = query.double() @ reference.double().T
    exact = dict(rtol=1e-12, atol=1e-12)  # chunks of another shape round another way in the last bit
    torch.testing.assert_close(oracle.top["dot"], dense.sort(dim=1, descending=True).values[:, :8], **exact)
    distances = torch.cdist(query.double(), reference.double()).square()
    torch.testing.assert_close(oracle.top["l2"], distances.sort(dim=1).values[:, :8])
    torch.testing.assert_close(oracle.per_class["dot"][:, 2], dense[:, labels == 2].amax(dim=1), **exact)


def test_class_maxima_from_sorted_and_shuffled_labels_with_an_empty_class():
    query, reference, labels = inputs()
    labels = labels.clamp(max=2)  # class 3 of 5 has no reference, nor has class 4
    dense = query.double() @ reference.double().T
    shuffled = torch.randperm(300, generator=torch.Generator().manual_seed(1))
    for columns in (labels, labels[shuffled]):  # slices, then masks
        oracle = Float64Oracle(query, reference if columns is labels else reference[shuffled], columns, 5)
        expected = torch.stack([dense[:, labels == c].amax(dim=1) for c in range(3)], dim=1)
        torch.testing.assert_close(oracle.per_class["dot"][:, :3], expected, rtol=1e-12, atol=1e-12)
        assert (oracle.per_class["dot"][:, 3:] == -float("inf")).all()
        assert (oracle.per_class["l2"][:, 3:] == float("inf")).all()


def test_right_answers_agree_and_wrong_ones_do_not():
    query, reference, labels = inputs()
    oracle = Float64Oracle(query, reference, labels, 4)
    for metric in ("dot", "l2", "cosine"):
        top8 = refmatch.match(query, reference, k=8, metric=metric, backend="torch").index
        assert oracle.agreement(top8, metric, 8) == 1.0 and oracle.agreement(top8[:, 0], metric) == 1.0
    wrong = top8.clone()
    wrong[:, 1:] = top8[:, -1:]  # the first slot right, the other seven not
    assert oracle.agreement(wrong, "cosine", 8) == 0.0
    assert oracle.agreement(top8.flip(1), "cosine", 8) == 0.0, "worst first"
    assert oracle.agreement(top8[:, :2], "cosine", 8) == 0.0, "two slots of eight"
    assert oracle.agreement(torch.full((50,), -1), "dot") == 0.0
    twins = torch.cat([reference, reference[top8[:1, 0]]])  # row 0's best, twice: its top two tie exactly
    best_twice = refmatch.match(query[:1], twins, k=8, metric="cosine", backend="torch").index
    best_twice[:, 1] = best_twice[:, 0]
    assert Float64Oracle(query[:1], twins).agreement(best_twice, "cosine", 8) == 0.0, "a reference named twice"
    scores = refmatch.classwise_max(query, reference, labels, 4, metric="dot", backend="torch")
    assert oracle.classwise_agreement(scores, "dot", torch.float32) == 1.0
    assert oracle.classwise_agreement(scores[:, [1, 0, 2, 3]], "dot", torch.float32) == 0.0
    best_everywhere = scores.amax(dim=1, keepdim=True).expand(-1, 4)
    assert oracle.classwise_agreement(best_everywhere, "dot", torch.float32) == 0.0


def test_slots_past_the_references_never_agree():
    query, reference, _ = inputs()
    oracle = Float64Oracle(query, reference[:4])
    padded = torch.cat([refmatch.match(query, reference[:4], k=4, backend="torch").index,
                        torch.full((50, 4), -1)], dim=1)  # as FAISS pads a k=8 list of 4 references
    assert oracle.agreement(padded, "cosine", 8) == 0.0 and oracle.agreement(padded[:, :4], "cosine", 4) == 1.0
