"""Bad input raises a clear error before any kernel runs; backends agree on random input."""
import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import refmatch
from conftest import DEVICE, FUSED, HAS_CUDA
from oracle import assert_matches_oracle, dense_scores, oriented

Q, R = torch.randn(4, 8), torch.randn(10, 8)
BAD_INPUTS = [
    (dict(query=[[1.0]]), TypeError, "query must be a torch.Tensor, got list"),
    (dict(reference=None), TypeError, "reference must be a torch.Tensor, got NoneType"),
    (dict(query=torch.randn(4, 8, 2)), ValueError, r"query must be \[N, D\].*got shape \(4, 8, 2\)"),
    (dict(reference=torch.randn(10)), ValueError, r"reference must be \[M, D\], got shape \(10,\)"),
    (dict(reference=torch.randn(10, 7)), ValueError, "reference has D=7 channels but query has 8"),
    (dict(reference=torch.randn(8, 10)), ValueError, r"has 8 \(D = query.shape\[1\]; a \[D, M\] reference\? pass "
                                                     r"reference.T\)"),
    (dict(query=torch.randn(2, 4, 4, 8)), ValueError,  # channels last, as a numpy image: the fix is named, with
     # an "if": a [B, D, H, W] map whose width equals the reference's D (the wrong layer tapped) looks the same
     r"query has 4 \(D = query.shape\[1\]; if it is \[B, H, W, D\] \(NumPy's image layout\), "
     r".permute\(0, 3, 1, 2\) passes it as a view\)"),
    (dict(query=torch.randn(1, 8, 2, 3, 4)), ValueError,  # a volume: how it goes in
     r"got shape \(1, 8, 2, 3, 4\); a volume \[B, D, Z, H, W\] goes in as volume.flatten\(2, 3\), its results "
     r"come back with .unflatten\(-2, \(Z, H\)\)"),
    (dict(query=torch.randn(4, 0), reference=torch.randn(3, 0)), ValueError, "D=0"),
    (dict(reference=torch.randn(0, 8)), ValueError, "reference is empty"),
    (dict(query=Q.int(), reference=R.int()), TypeError, "query must be float16.*got torch.int32"),
    (dict(reference=R.half()), TypeError, "reference dtype torch.float16 differs from query dtype torch.float32"),
    (dict(reference=R.to("meta")), ValueError, "reference is on meta but query is on cpu"),
    (dict(labels=torch.zeros(10, dtype=torch.long, device="meta")), ValueError,
     r"labels are on meta but reference is on cpu: move them with labels.to\(reference.device\)$"),
    (dict(labels=torch.zeros(9, dtype=torch.long)), ValueError, r"labels must be \[M\] = \[10\].*\(9,\)"),
    (dict(labels=torch.zeros(10)), TypeError, r"labels must have an integer dtype \(int64, .*\), got torch.float32$"),
    (dict(labels=torch.zeros(10, dtype=torch.uint32)), TypeError,
     r"labels must have an integer dtype .*got torch.uint32; .long\(\) converts them"),
    (dict(query=Q.to_sparse()), TypeError, "query must be a dense .strided. tensor, got layout torch.sparse_coo"),
    (dict(reference=R.to_sparse()), TypeError, "reference must be a dense .strided. tensor, got layout torch.sparse_coo"),
    (dict(query=torch.nested.nested_tensor([Q[:2], Q[2:]], layout=torch.jagged)), TypeError,
     r"query must be a dense tensor, got a nested tensor: torch.cat\(x.unbind\(\)\) joins its rows"),
    (dict(labels=[0] * 10), TypeError, "labels must be a torch.Tensor or None, got list"),
    (dict(labels=torch.tensor([0] * 9 + [-2])), ValueError, "labels must be >= 0, got -2"),
    (dict(labels=torch.tensor([0] * 9 + [-2]), ignore_index=-1), ValueError,
     r"labels must be >= 0 \(or ignore_index=-1\), got -2"),
    (dict(ignore_index=255), ValueError, "ignore_index needs labels"),
    (dict(labels=torch.zeros(10, dtype=torch.long), ignore_index=1.0), TypeError,
     "ignore_index must be an int or None, got float"),
    (dict(k=0), ValueError, "k must satisfy 1 <= k <= M=10, got k=0"),
    (dict(k=11), ValueError, "k must satisfy 1 <= k <= M=10, got k=11"),
    (dict(k=2.0), TypeError, "k must be an int, got float"),
    (dict(k=True), TypeError, "k must be an int, got bool"),
    (dict(metric="euclid"), ValueError, "metric must be one of 'cosine', 'dot', 'l2', got 'euclid'"),
    (dict(metric=numpy.array(["cosine", "dot"])), ValueError,  # refused by type, never compared elementwise
     r"metric must be one of .*got array\(\['cosine', 'dot'\]"),
    (dict(backend="faiss"), ValueError, "backend must be one of 'auto', 'cuda', 'triton', 'torch', got 'faiss'"),
    (dict(backend="cuda"), ValueError, "backend='cuda' cannot run this call"),
]


@pytest.mark.parametrize("changes, error, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_is_named(changes, error, message):
    arguments = dict(query=Q, reference=R, labels=None, k=1, metric="cosine", backend="auto")
    arguments.update(changes)
    query, reference, labels = arguments.pop("query"), arguments.pop("reference"), arguments.pop("labels")
    with pytest.raises(error, match=message):
        refmatch.match(query, reference, labels, **arguments)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        refmatch.match(Q, R, backend="triton")


def test_backends_report_every_backend_with_a_reason():
    report = {status.name: status for status in refmatch.backends()}
    assert set(report) == {"cuda", "triton", "torch"}
    assert report["torch"].available
    assert all(status.reason for status in report.values())
    if not HAS_CUDA:
        assert not report["cuda"].available


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 80), d=st.integers(1, 40),
       metric=st.sampled_from(["cosine", "dot", "l2"]), seed=st.integers(0, 2**31 - 1),
       duplicates=st.booleans(), k=st.sampled_from([1, 1, 2, 5]))
def test_backends_agree(n, m, d, metric, seed, duplicates, k):
    generator = torch.Generator().manual_seed(seed)
    # Small integers make many exact ties, which every backend must break alike.
    query = torch.randint(-2, 3, (n, d), generator=generator).float().to(DEVICE)
    reference = torch.randint(-2, 3, (m, d), generator=generator).float().to(DEVICE)
    if duplicates:
        reference = torch.cat([reference, reference])
    k = min(k, reference.shape[0])
    # The dense float64 oracle, best first; a stable sort puts exact ties in index order.
    scores = oriented(dense_scores(query, reference, metric), metric)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    expected_score = oriented(scores.gather(1, order), metric).squeeze(1)
    for backend in ["torch"] + FUSED:
        result = refmatch.match(query, reference, k=k, metric=metric, backend=backend)
        torch.testing.assert_close(result.score.double().cpu(), expected_score, atol=1e-5, rtol=1e-5,
                                   msg=backend)
        if metric == "cosine":  # parallel rows tie only up to rounding of 1/|r|
            assert_matches_oracle(result, query, reference, metric, k=k)
        else:  # small-integer dot products are exact: ties must break identically
            assert torch.equal(result.index.cpu(), order.squeeze(1)), backend


@pytest.mark.parametrize("shape, dim", [((3, 5, 7, 4), 1), ((40, 6), 1), ((0, 6), 1)])
def test_squared_norms_in_chunks_equal_one_pass(shape, dim):
    from refmatch.backends.scoring import squared_norms

    tensor = torch.randn(shape).bfloat16()
    expected = tensor.float().square().sum(dim).reshape(-1)
    for layout in (tensor, tensor.transpose(0, -1).contiguous().transpose(0, -1)):  # strided too
        torch.testing.assert_close(squared_norms(layout, dim, max_elements=7), expected)
    rows = tensor.reshape(-1, shape[-1]) if tensor.dim() == 2 else None
    if rows is not None and rows.numel():  # [1, D, N, 1] row maps: chunks along N
        torch.testing.assert_close(squared_norms(rows.T[None, :, :, None], 1, max_elements=7),
                                   rows.float().square().sum(1))


def test_numpy_and_tensor_integers_are_ints():
    numpy = pytest.importorskip("numpy")
    labels = torch.tensor([0, 1, 2, 255, 1, 0, 2, 1, 0, 2])
    expected = refmatch.match(Q, R, labels, k=2, ignore_index=255)
    for k, ignore in ((numpy.int64(2), numpy.int32(255)), (torch.tensor(2), torch.tensor(255))):
        result = refmatch.match(Q, R, labels, k=k, ignore_index=ignore)
        assert torch.equal(result.index, expected.index)
    scores = refmatch.classwise_max(Q, R, labels, numpy.int64(3), ignore_index=numpy.int64(255))
    assert scores.shape == (4, 3)
