"""First check of the CUDA backend's Hopper (wgmma) kernel on a GPU, kept short so
that a hang or a wrong result shows before the long stages of gpu_suite.sh.

    python bench/check_wgmma.py [--rows 256] [--query registers]  # exit 0: agrees with the
                                                                  # float64 oracle, or no sm_90 GPU

For a few shapes (D tails, 1 to 4 chunks, tile tails, a split bank, more than one
CTA of rows) and every metric it runs the kernel with REFMATCH_CUDA_HOPPER=1,
``--rows`` query rows per CTA (REFMATCH_CUDA_HOPPER_ROWS; 256 runs the 128-row
kernel where D > 192) and the query in ``--query`` (REFMATCH_CUDA_HOPPER_QUERY;
registers at any D with 128 rows, up to D = 64 with 256) and prints the fraction of rows
whose returned reference scores within 1e-4 of the oracle's best (``refmatch bench``'s check).
"""
import argparse
import sys

import torch

import refmatch
from refmatch.backends.cuda_backend import hopper_kernel, hopper_enabled, kernel_name
from refmatch.bench import agreement, oracle_best

SHAPES = [(1, 1, 8), (130, 197, 72), (129, 1000, 128), (300, 4000, 256), (64, 50_000, 64), (700, 3000, 192),
          (300, 2000, 40)]
# The wgmma kernel's variants by the names gpu_suite.sh and the other scripts take: (rows, query).
VARIANTS = {"128": (128, "shared"), "256": (256, "shared"), "128-rs": (128, "registers"),
            "256-rs": (256, "registers")}


def expected_kernel(rows, query, dim):
    """The wgmma kernel's name for `rows` and `query` asked and D = dim: 256-row tiles fit
    up to D = 192; the query stays in registers at any D with 128 rows, to D = 64 with 256."""
    rows = 256 if rows == 256 and dim <= 192 else 128
    registers = query == "registers" and (rows == 128 or dim <= 64)
    return "wgmma" + ("-256" if rows == 256 else "") + ("-rs" if registers else "")


def serves(rows, query, dim):
    """Whether D = dim runs the variant asked for (not a fallback another variant covers)."""
    return expected_kernel(rows, query, dim) == expected_kernel(rows, query, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, choices=[128, 256], default=128, help="query rows per CTA")
    parser.add_argument("--query", choices=["shared", "registers"], default="shared",
                        help="where the query operand lives")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no GPU")
        return 0
    with hopper_kernel(rows=args.rows, query=args.query):
        if not hopper_enabled(torch.device("cuda")):
            print("skipped: not an sm_90 device, or a build without sm_90a")
            return 0
        worst = 1.0
        # Only the shapes that run the variant asked for (256 rows: D <= 192; registers with
        # 256 rows: D <= 64), so a failure here is this variant's.
        for n, m, d in [shape for shape in SHAPES if serves(args.rows, args.query, shape[2])]:
            for dtype in (torch.bfloat16, torch.float16):
                query = torch.randn(n, d, device="cuda").to(dtype)
                reference = torch.randn(m, d, device="cuda").to(dtype)
                assert kernel_name(query.T[None, :, :, None], reference) == expected_kernel(args.rows, args.query, d)
                for metric in ("dot", "l2", "cosine"):
                    index = refmatch.match(query, reference, metric=metric, backend="cuda").index
                    torch.cuda.synchronize()
                    fraction = agreement(index, query, reference, metric, oracle_best(query, reference, metric))
                    worst = min(worst, fraction)
                    print(f"{n}x{m}x{d} {str(dtype)[6:]:8} {metric:6} agreement {100 * fraction:6.2f} %", flush=True)
    print(f"worst agreement {100 * worst:.2f} %")
    return 0 if worst == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
