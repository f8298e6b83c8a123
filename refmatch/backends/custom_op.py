"""One ``torch.library.custom_op`` per backend, all with the same schema.

Registering the backend call as an opaque op with a fake (meta) implementation
lets ``torch.compile(fullgraph=True)`` and CUDA graphs trace code that calls
``refmatch.match`` without looking inside the kernels.
"""
import torch

from .scoring import accumulation_dtype


def fused_kernel_limits(problem):
    """Why the fused kernels (Triton and CUDA alike) cannot take ``problem``, or None."""
    if problem.dtype == torch.float64:
        return "float64 runs on the torch backend only"
    if problem.op == "classwise":
        return "the class-wise max is not fused yet; backend='torch' serves it"
    if problem.k > 1:
        return "the fused top-k (k > 1) is not implemented yet; backend='torch' serves it"
    return None


def register_match_op(backend_name, impl):
    """Register ``refmatch::match_<backend_name>``.

    ``impl(query [B, D, H, W], reference [M, D], k, metric)`` must return
    (score [N, k], index [N, k] int64) with N = B * H * W.
    """

    @torch.library.custom_op(f"refmatch::match_{backend_name}", mutates_args=())
    def match_op(query: torch.Tensor, reference: torch.Tensor, k: int, metric: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return impl(query, reference, k, metric)

    @match_op.register_fake
    def _(query, reference, k, metric):
        rows = query.shape[0] * query.shape[2] * query.shape[3]
        score = query.new_empty((rows, k), dtype=accumulation_dtype(query.dtype))
        return score, query.new_empty((rows, k), dtype=torch.int64)

    return match_op


def register_classwise_op(backend_name, impl):
    """Register ``refmatch::classwise_max_<backend_name>``.

    ``impl(query [B, D, H, W], reference [M, D], labels [M], num_classes, metric)``
    must return the best score per class, [N, C].
    """

    @torch.library.custom_op(f"refmatch::classwise_max_{backend_name}", mutates_args=())
    def classwise_op(query: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     metric: str) -> torch.Tensor:
        return impl(query, reference, labels, num_classes, metric)

    @classwise_op.register_fake
    def _(query, reference, labels, num_classes, metric):
        rows = query.shape[0] * query.shape[2] * query.shape[3]
        return query.new_empty((rows, num_classes), dtype=accumulation_dtype(query.dtype))

    return classwise_op
