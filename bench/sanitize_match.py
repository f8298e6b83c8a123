"""Small calls of the CUDA and Triton match kernels, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python bench/sanitize_match.py

Covers every kernel variant and load path at sizes that stay fast under
instrumentation: fp16 / bf16 / fp32 (3xTF32 and TF32), all metrics, tile and
D tails, split-M with the merge kernel, the streamed (wide-D) query, strided
query maps, reference layouts that cannot use cp.async, ignore_index, the
class-wise max (CUDA: class-aligned ranges) and the top-k, all on the
mma.sync kernel (REFMATCH_CUDA_HOPPER=0); then, on sm_90, the wgmma kernel on its own cases,
in each variant ``--hopper-variants`` names (``hopper_variants.HOPPER_VARIANTS``: 128 or 256
query rows per CTA, "-rs": the query in registers, "-tma": the bank loaded through TMA), and
with ``--wgmma-top-k`` its opt-in top-k (``REFMATCH_CUDA_HOPPER_TOPK=wgmma``) in each of them.
``--backends`` with no name leaves the first part out (the wgmma variants' cases alone).
"""
import argparse

import torch

import refmatch
from refmatch.backends.cuda_backend import hopper_enabled, kernel_name, match_argmax_cuda
from refmatch.backends.hopper_variants import HOPPER_VARIANTS, default_hopper_kernels, hopper_kernel, hopper_topk_kernel
from refmatch.backends.scoring import reference_stat

from check_wgmma import serves


def cases(device):
    """(name, query, reference) triples."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        yield f"rows {dtype}", torch.randn(130, 72, device=device).to(dtype), torch.randn(197, 72, device=device).to(dtype)
        yield f"odd D {dtype}", torch.randn(7, 33, device=device).to(dtype), torch.randn(70, 33, device=device).to(dtype)
    maps = torch.randn(2, 24, 5, 9, device=device).half().to(memory_format=torch.channels_last)[..., 1:8]
    yield "strided maps", maps, torch.randn(50, 24, device=device).half()
    yield "transposed bank", torch.randn(40, 24, device=device), torch.randn(24, 90, device=device).T
    yield "wide D (streamed query)", torch.randn(20, 1000, device=device).bfloat16(), torch.randn(70, 1000, device=device).bfloat16()


def sanitize_splits():
    """Split-M with the merge kernel, trailing empty splits (40) included; returns the inputs."""
    query, reference = torch.randn(50, 64, device="cuda").half(), torch.randn(1000, 64, device="cuda").half()
    for splits in (2, 7, 40):
        match_argmax_cuda(query.T[None, :, :, None], reference, reference_stat(reference, "l2"), "l2", splits=splits)
    return query, reference


def sanitize_hopper(variant, top_k=False):
    """The wgmma kernel's `variant` (a HOPPER_VARIANTS name): D tails, tile tails, 1-4 chunks,
    two CTAs of rows, splits, every metric; fp16 and bf16 for the kernels the default runs
    (``default_hopper_kernels``), bf16 for the others (the dtype only changes the MMA
    instruction), and only the shapes each
    variant serves (a fallback is another variant's kernel), to keep the stage short."""
    dtypes = (torch.float16, torch.bfloat16) if variant in default_hopper_kernels() else (torch.bfloat16,)
    with hopper_kernel(variant):
        if not hopper_enabled(torch.device("cuda")):
            print("--  wgmma kernel: not an sm_90 device or no sm_90a build")
            return
        for dtype in dtypes:
            for n, m, d in ((130, 197, 72), (7, 300, 256), (1, 1, 8), (129, 129, 136), (300, 260, 64)):
                if not serves(variant, d):
                    continue
                query, reference = torch.randn(n, d, device="cuda").to(dtype), torch.randn(m, d, device="cuda").to(dtype)
                assert kernel_name(query.T[None, :, :, None], reference) == variant
                for metric in ("cosine", "dot", "l2"):
                    refmatch.match(query, reference, metric=metric, backend="cuda")
        query, reference = sanitize_splits()
        refmatch.classwise_max(query, reference, torch.randint(0, 3, (1000,), device="cuda"), 3, backend="cuda")
        if top_k and serves(variant, query.shape[1]):
            with hopper_topk_kernel("wgmma"):
                assert kernel_name(query.T[None, :, :, None], reference, 8) == variant
                for k in (8, 64):  # splits' lists, padding rows past N (50 rows of a 128- or 256-row CTA)
                    refmatch.match(query, reference, k=k, metric="l2", backend="cuda")
    print(f"ok  wgmma kernel {variant}")


def sanitize_cases(backends):
    """Every case on each backend, then splits, TF32, ignore_index, class-wise and top-k."""
    for name, query, reference in cases("cuda"):
        for backend in backends:
            for metric in ("cosine", "dot", "l2"):
                refmatch.match(query, reference, metric=metric, backend=backend)
        print(f"ok  {name}")
    if "cuda" in backends:
        sanitize_splits()
        previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        refmatch.match(torch.randn(33, 40, device="cuda"), torch.randn(90, 40, device="cuda"), backend="cuda")
        torch.set_float32_matmul_precision(previous)
        print("ok  splits and tf32")
    query, reference = torch.randn(70, 40, device="cuda").bfloat16(), torch.randn(300, 40, device="cuda").bfloat16()
    labels = torch.randint(0, 5, (300,), device="cuda")
    labels[::7] = 255
    for backend in backends:
        refmatch.match(query, reference, labels, metric="dot", backend=backend, ignore_index=255)
        refmatch.classwise_max(query, reference, labels, 5, backend=backend, ignore_index=255)  # sorted copy
        refmatch.classwise_max(query, reference, labels.sort().values.clamp(max=4), 5, backend=backend)
        for k in (8, 64):
            refmatch.match(query, reference, labels, k=k, backend=backend, ignore_index=255)
        refmatch.match(query[:3], reference, k=8, backend=backend)  # padding rows past N
    print("ok  ignore_index, class-wise, top-k")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="*", choices=["cuda", "triton"], default=["cuda", "triton"],
                        help="backends of the mma.sync and Triton cases (none: only the wgmma variants' cases)")
    parser.add_argument("--hopper-variants", nargs="*", choices=list(HOPPER_VARIANTS),
                        default=list(HOPPER_VARIANTS),
                        help="the wgmma kernel's variants to run (none: leave its cases out)")
    parser.add_argument("--wgmma-top-k", action="store_true",
                        help="also the wgmma kernel's top-k (REFMATCH_CUDA_HOPPER_TOPK=wgmma) in each variant")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error(f"needs a CUDA device (it runs the CUDA and Triton kernels); torch {torch.__version__} sees none")
    if args.backends:
        with hopper_kernel("mma.sync"):  # mma.sync on every card; sanitize_hopper covers wgmma
            sanitize_cases(args.backends)
    for variant in args.hopper_variants:
        sanitize_hopper(variant, args.wgmma_top_k)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
