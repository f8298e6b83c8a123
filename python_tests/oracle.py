"""Float64 dense oracle and the error-ratio tolerances the tests share.

Tolerances follow flash-attention's rule: a backend's error may be at most twice
the error of a plain torch computation, plus a small epsilon. The plain computation
accumulates in float32 whatever the input dtype, as the contract promises: a float16 or
bfloat16 GEMM that rounds its scores to 8 or 11 bits would allow 10^3-10^5 times the
real error and pass kernels that return a runner-up.
"""
import torch
import torch.nn.functional as F

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rows_of(query):
    """[N, D] rows of [N, D] or [B, D, H, W] input."""
    return query if query.dim() == 2 else query.permute(0, 2, 3, 1).reshape(-1, query.shape[1])


def dense_scores(query, reference, metric, dtype=torch.float64):
    """The full [N, M] score matrix computed in ``dtype``: the float64 oracle on the
    CPU, a low-precision one on the inputs' device (torch's own error there)."""
    device = "cpu" if dtype == torch.float64 else query.device
    q, r = rows_of(query).to(device, dtype), reference.to(device, dtype)
    if metric == "cosine":
        return F.normalize(q, dim=1) @ F.normalize(r, dim=1).T
    if metric == "dot":
        return q @ r.T
    return (q * q).sum(1, keepdim=True) - 2 * q @ r.T + (r * r).sum(1)[None, :]


def oriented(scores, metric):
    """Larger is better."""
    return -scores if metric == "l2" else scores


def topk_oracle(query, reference, metric, k=1):
    """Best k oracle scores per row, [N, k], best first."""
    scores = oriented(dense_scores(query, reference, metric), metric)
    return oriented(scores.topk(k, dim=1).values, metric)


def tolerance(query, reference, metric, k=1, operands_rounded_to=None):
    """2x the error of plain torch accumulating in float32 (float64 inputs: 1e-9 relative),
    plus epsilon. ``operands_rounded_to`` rounds both operands to that dtype first, as a
    kernel that reads lower-precision operands does (TF32 keeps float16's 10 mantissa bits)."""
    exact = topk_oracle(query, reference, metric, k)
    if query.dtype == torch.float64:
        return 1e-9 * (1 + exact.abs().max().item())
    if operands_rounded_to is not None:
        query, reference = query.to(operands_rounded_to), reference.to(operands_rounded_to)
    plain = dense_scores(query, reference, metric, dtype=torch.float32).double().cpu()
    plain = oriented(oriented(plain, metric).topk(k, dim=1).values, metric)
    finite = torch.isfinite(exact)
    error = (plain - exact)[finite].abs().max().item()
    return 2 * error + 1e-5 * (1 + exact[finite].abs().max().item())


def assert_matches_oracle(result, query, reference, metric, k=1, labels=None):
    """Tie-aware check: the oracle score at each returned index is within tolerance
    of the oracle's best (k-th best for column j), and returned scores are too."""
    tol = tolerance(query, reference, metric, k)
    exact = topk_oracle(query, reference, metric, k)
    dense = dense_scores(query, reference, metric)
    index = result.index.reshape(exact.shape[0], -1) if query.dim() == 2 else \
        result.index.reshape(query.shape[0], k, -1).transpose(1, 2).reshape(-1, k)
    score = result.score.reshape(exact.shape[0], -1) if query.dim() == 2 else \
        result.score.reshape(query.shape[0], k, -1).transpose(1, 2).reshape(-1, k)
    assert (index >= 0).all(), "every row has finite scores, so every row must match"
    for column in range(k):
        at_index = dense.gather(1, index[:, column:column + 1].cpu())[:, 0]
        torch.testing.assert_close(at_index, exact[:, column], atol=tol, rtol=0)
        torch.testing.assert_close(score[:, column].double().cpu(), exact[:, column], atol=tol, rtol=0)
    if k > 1:
        assert all(len(set(row.tolist())) == k for row in index), "indices repeat within a row"
    if labels is not None:
        assert torch.equal(result.label.cpu(), labels.cpu()[result.index.cpu()])
