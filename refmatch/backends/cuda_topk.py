"""Top-k (k = 2 .. 64) on the CUDA backend's mma.sync kernel, or on sm_90 its wgmma kernel
where ``REFMATCH_CUDA_HOPPER_TOPK=wgmma`` (opt-in until a GPU run has checked it).

Each query row keeps a sorted list of its k best references in the kernel's
output, [splits, N, k]; a tile whose row max cannot beat the list's last slot
costs one compare per score (csrc/include/refmatch/match_epilogue.cuh). The
splits' lists are merged here with the tie rule of every backend.
"""
import torch

from ..candidates import merge_split_lists
from .custom_op import MAX_FUSED_SLOTS


def match_topk_cuda(query, reference, ref_stat, metric, k, *, splits=None):
    """Best k references per query row from the fused CUDA kernel, before the per-row fix-up.

    Args:
        query: [B, D, H, W] CUDA maps, read through their strides ([N, D] rows as
            ``rows.T[None, :, :, None]``); float32, float16 or bfloat16.
        reference: [M, D], same dtype and device.
        ref_stat: [M] float32: 1/|r| (cosine), |r|^2 (l2), ignored (dot); NaN
            marks a reference that never matches.
        metric: "dot", "cosine" or "l2".
        k: 2 <= k <= 64.
        splits: number of bank ranges (default: enough to fill the device).

    Returns:
        (score [N, k] float32, index [N, k] int64), best first: q.r, q.r/|r| or
        2 q.r - |r|^2; equal scores in index order; slots past the finite scores
        hold (-inf, -1).
    """
    from .cuda_backend import default_splits, run_kernel

    if not 2 <= k <= MAX_FUSED_SLOTS:
        raise ValueError(f"the CUDA top-k takes 2 <= k <= {MAX_FUSED_SLOTS}, got k={k}")
    batch, _, height, width = query.shape
    num_rows = batch * height * width
    splits = splits or default_splits(query, reference, k)
    # The kernel writes every slot, empty ones as (-inf, -1).
    lists_score = torch.empty(splits, num_rows, k, device=query.device, dtype=torch.float32)
    lists_index = torch.empty(splits, num_rows, k, device=query.device, dtype=torch.int64)
    if num_rows > 0:
        run_kernel(query, reference, ref_stat, metric, lists_score, lists_index, splits=splits, k=k)
    return merge_split_lists(lists_score, lists_index)
