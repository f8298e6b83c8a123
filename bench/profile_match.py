"""One launch of each fused match kernel, for Nsight Compute (gpu_suite.sh's profile stage).

    ncu --clock-control none -k "regex:match_argmax|match_kernel" --section SpeedOfLight \
        python bench/profile_match.py --size 65536x262144x128

Runs the Triton kernel, the CUDA mma.sync kernel and, on sm_90 with an sm_90a
build, the CUDA wgmma kernel with 128 and with 256 query rows per CTA once each (dot, k = 1; ncu replays a launch with
flushed caches, so no warm-up is needed). The default size gives 512 CTAs of
128 query rows (256 of 256), enough to fill an H100 twice.
"""
import argparse
import contextlib

import torch

import refmatch
from refmatch.backends.cuda_backend import hopper_enabled, hopper_kernel


def kernels(device, hopper_rows):
    """(name, backend, context) for each fused kernel this device runs."""
    yield "triton", "triton", contextlib.nullcontext()
    yield "cuda mma.sync", "cuda", hopper_kernel(enabled=False)
    if hopper_enabled(device):
        for rows in hopper_rows:
            yield f"cuda wgmma {rows} rows", "cuda", hopper_kernel(rows=rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="65536x262144x128", help="NxMxD")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--hopper-rows", type=int, nargs="+", choices=[128, 256], default=[128, 256],
                        help="query rows per CTA of the wgmma kernels to profile")
    args = parser.parse_args()
    n, m, d = (int(part) for part in args.size.split("x"))
    dtype = getattr(torch, args.dtype)
    query = torch.randn(n, d, device="cuda").to(dtype)
    reference = torch.randn(m, d, device="cuda").to(dtype)
    for name, backend, context in kernels(query.device, args.hopper_rows):
        with context:
            refmatch.match(query, reference, metric="dot", backend=backend)
        torch.cuda.synchronize()
        print(f"ran {name} at {args.size} {args.dtype}", flush=True)


if __name__ == "__main__":
    main()
