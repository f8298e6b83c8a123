"""One launch of each fused match kernel, for Nsight Compute (gpu_suite.sh's profile stage).

    ncu --clock-control none -k "regex:match_kernel|match_sm90_kernel" --section SpeedOfLight \
        python bench/profile_match.py --size 65536x262144x128

Runs the Triton kernel, the CUDA mma.sync kernel and, on sm_90 with an sm_90a
build, each variant of the CUDA wgmma kernel that ``--hopper-variants`` names, once
each (dot, k = 1; ncu replays a launch with flushed caches, so no warm-up is needed); then
the top-k kernels of Triton and CUDA (mma.sync, and with ``--wgmma-top-k`` on sm_90 the wgmma
kernel's opt-in top-k, ``REFMATCH_CUDA_HOPPER_TOPK=wgmma``) for each ``--top-k``, whose cost
over k = 1 issue #4 asks about. The default size gives 512 CTAs of 128 query rows
(256 of 256), enough to fill an H100 twice.
"""
import argparse
import contextlib

import torch

import refmatch
from refmatch.backends.cuda_backend import hopper_enabled, kernel_name
from refmatch.backends.hopper_variants import (HOPPER_VARIANTS, documented_hopper_kernel, hopper_kernel,
                                               hopper_topk_kernel)
from refmatch.bench import size_triple

from check_wgmma import serves


def kernels(device, hopper_variants, dim, top_ks, wgmma_top_k=False, with_k1=True):
    """(name, backend, context, CUDA kernel name or None, k) for each fused kernel this device
    runs at D = dim (the k = 1 ones unless ``with_k1`` is False); a wgmma variant that D does
    not allow (256-rs above D = 64) is left out, said so."""
    if with_k1:
        yield "triton", "triton", contextlib.nullcontext(), None, 1
        yield "cuda mma.sync", "cuda", hopper_kernel("mma.sync"), "mma.sync", 1
    if with_k1 and hopper_enabled(device):
        for variant in hopper_variants:
            if not serves(variant, dim):
                print(f"skipped cuda {variant}: D={dim} runs {documented_hopper_kernel(variant, dim)}", flush=True)
                continue
            yield f"cuda {variant}", "cuda", hopper_kernel(variant), variant, 1
    for k in top_ks:
        yield f"triton top-{k}", "triton", contextlib.nullcontext(), None, k
        yield f"cuda top-{k} (mma.sync)", "cuda", hopper_topk_kernel("mma.sync"), "mma.sync", k
        if wgmma_top_k and hopper_enabled(device):
            kernel = documented_hopper_kernel(next(iter(HOPPER_VARIANTS)), dim)
            yield f"cuda top-{k} ({kernel})", "cuda", hopper_topk_kernel("wgmma"), kernel, k


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_triple, default="65536x262144x128", help="NxMxD")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--hopper-variants", nargs="*", choices=list(HOPPER_VARIANTS),
                        default=list(HOPPER_VARIANTS), help="the wgmma kernel's variants to profile (none: none)")
    parser.add_argument("--top-k", nargs="*", type=int, default=[8], help="top-k kernels to profile (none: none)")
    parser.add_argument("--wgmma-top-k", action="store_true",
                        help="also the wgmma kernel's top-k (REFMATCH_CUDA_HOPPER_TOPK=wgmma) on sm_90")
    parser.add_argument("--top-k-only", action="store_true", help="the top-k kernels alone, no k = 1 kernel")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error(f"needs a CUDA device (it launches the fused CUDA kernels); torch {torch.__version__} sees none")
    n, m, d = args.size
    dtype = getattr(torch, args.dtype)
    query = torch.randn(n, d, device="cuda").to(dtype)
    reference = torch.randn(m, d, device="cuda").to(dtype)
    for name, backend, context, cuda_kernel, k in kernels(query.device, args.hopper_variants, d, args.top_k,
                                                          args.wgmma_top_k, with_k1=not args.top_k_only):
        with context:
            if cuda_kernel is not None:
                assert kernel_name(query.T[None, :, :, None], reference, k) == cuda_kernel
            refmatch.match(query, reference, k=k, metric="dot", backend=backend)
        torch.cuda.synchronize()
        print(f"ran {name} at {n}x{m}x{d} {args.dtype}", flush=True)


if __name__ == "__main__":
    main()
