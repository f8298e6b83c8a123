"""First check of the CUDA backend's Hopper (wgmma) kernel on a GPU, kept short so
that a hang or a wrong result shows before the long stages of gpu_suite.sh.

    python bench/check_wgmma.py [--variant wgmma] [--top-k 8]   # exit 0: agrees with the
                                                                # float64 oracle, or no sm_90 GPU

For a few shapes (D tails, 1 to 4 chunks, tile tails, a split bank, more than one
CTA of rows) and every metric it runs the kernel in ``--variant`` (a
``hopper_variants.HOPPER_VARIANTS`` name: 128 or 256 query rows per CTA, "-rs": the query
in registers, "-tma": the bank loaded through TMA), on the shapes whose D runs that variant rather than a fallback, and
prints the fraction of rows whose returned reference scores within 1e-4 of the
oracle's best (``refmatch bench``'s check). Then the class-wise max, whose class ranges
start at any row (an unaligned TMA box of metric terms was an illegal instruction on an
H200 in session 22), against the float64 torch backend. With ``--top-k K`` (2 .. 64) it
checks the variant's top-k instead (``REFMATCH_CUDA_HOPPER_TOPK=wgmma``): every one of the K
slots against the oracle's, on the shapes with at least K references, with the lists in shared
memory where they fit and in the outputs throughout (``REFMATCH_CUDA_HOPPER_TOPK_LISTS``).
"""
import argparse
import itertools
import sys

import torch

import refmatch
from refmatch.backends.cuda_backend import _built_for_hopper, hopper_enabled, kernel_name
from refmatch.backends.hopper_variants import (HOPPER_TOPK_LISTS, HOPPER_VARIANTS, documented_hopper_kernel,
                                               hopper_kernel, hopper_topk_kernel, hopper_topk_lists)
from refmatch.backends.custom_op import MAX_FUSED_SLOTS
from refmatch.bench_oracle import Float64Oracle

LISTS = HOPPER_TOPK_LISTS  # where the top-k keeps its lists; k = 1 has none
SHAPES = [(1, 1, 8), (130, 197, 72), (129, 1000, 128), (300, 4000, 256), (64, 50_000, 64), (700, 3000, 192),
          (300, 2000, 40)]


def serves(variant, dim):
    """Whether a call at D = dim runs ``variant`` itself, not a fallback that another variant covers."""
    return documented_hopper_kernel(variant, dim) == variant


def class_ranges_error(variant):
    """Largest error of the class-wise max (3 classes, labels unsorted, so ranges start
    at unaligned rows) against float64, relative to 1 + the largest score; 0 where no
    shape runs ``variant``."""
    worst = 0.0
    shape = next((shape for shape in SHAPES if serves(variant, shape[2]) and shape[1] >= 1000), None)
    if shape is None:
        return worst
    n, m, d = shape
    query = torch.randn(n, d, device="cuda").bfloat16()
    reference = torch.randn(m, d, device="cuda").bfloat16()
    labels = torch.randint(0, 3, (m,), device="cuda")
    for metric in ("dot", "l2", "cosine"):
        scores = refmatch.classwise_max(query, reference, labels, 3, metric=metric, backend="cuda").double()
        exact = refmatch.classwise_max(query.double(), reference.double(), labels, 3, metric=metric, backend="torch")
        error = ((scores - exact).abs().max() / (1 + exact.abs().max())).item()
        worst = max(worst, error)
        print(f"{n}x{m}x{d} class ranges {metric:6} relative error {error:.1e}", flush=True)
    return worst


def top_k(text):
    """--top-k's value: an int from 1 to the fused kernels' limit (MAX_FUSED_SLOTS)."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_FUSED_SLOTS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_FUSED_SLOTS}, got {text!r}")
    return int(text)


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--variant", choices=list(HOPPER_VARIANTS), default=next(iter(HOPPER_VARIANTS)),
                        help="query rows per CTA (-256), the query in registers (-rs), TMA loads (-tma)")
    parser.add_argument("--top-k", type=top_k, default=1, metavar="K",
                        help="check top-K (2 .. 64) on the wgmma kernel instead of k = 1 (default 1)")
    args = parser.parse_args()
    k = args.top_k
    if not torch.cuda.is_available():
        print("skipped: no GPU")
        return 0
    with hopper_kernel(args.variant), hopper_topk_kernel("wgmma"):
        if not hopper_enabled(torch.device("cuda")):
            if torch.cuda.get_device_capability() == (9, 0) and not _built_for_hopper():
                print("failed: an sm_90 device, and this build has no sm_90a code (REFMATCH_CUDA_ARCHS?)")
                return 1  # a check that could have run and did not: not a pass
            print("skipped: not an sm_90 device")
            return 0
        worst = 1.0
        for n, m, d in [shape for shape in SHAPES if serves(args.variant, shape[2]) and shape[1] >= k]:
            for dtype in (torch.bfloat16, torch.float16):
                query = torch.randn(n, d, device="cuda").to(dtype)
                reference = torch.randn(m, d, device="cuda").to(dtype)
                assert kernel_name(query.T[None, :, :, None], reference, k) == args.variant
                oracle = Float64Oracle(query, reference, slots=k)
                for metric, lists in itertools.product(("dot", "l2", "cosine"), LISTS if k > 1 else LISTS[:1]):
                    with hopper_topk_lists(lists):
                        index = refmatch.match(query, reference, k=k, metric=metric, backend="cuda").index
                    torch.cuda.synchronize()
                    fraction = oracle.agreement(index, metric, k=k)
                    worst = min(worst, fraction)
                    print(f"{n}x{m}x{d} {str(dtype)[6:]:8} {metric:6} k={k} lists {lists:6} "
                          f"agreement {100 * fraction:6.2f} %", flush=True)
        class_error = class_ranges_error(args.variant) if k == 1 else 0.0
    print(f"worst agreement {100 * worst:.2f} %, class-wise relative error {class_error:.1e}")
    return 0 if worst == 1.0 and class_error <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
