"""Compile the Triton ``match`` kernel for a GPU architecture on a machine without a GPU.

The interpreter runs the kernels' logic on the CPU but never lowers them, so
type errors in the lowering, shared-memory overruns and register spills would
only show on a GPU. This compiles every reduction ahead of time with the
launcher's own tile shapes (``launch_config``), to a cubin per variant.

    python -m refmatch.kernels.match_aot --arch 90 --dim 128 --out DIR   # DIR/<variant>.cubin
    python -m refmatch.kernels.match_aot --arch 86 --dtype float32 --shared-limit 101376 --out DIR
        # each at the first step of the launcher's shared-memory ladder that fits a 99 KB card

Needs triton with its CUDA backend and must run without TRITON_INTERPRET=1.
"""
import argparse
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..backends.triton_backend import triton_version
from .match import FP_FUSION, METRIC_CODES, REDUCTIONS, _match_kernel
from .match_launch import MAX_SLOTS
from .match_tiles import launch_config, shared_memory_ladder

POINTER_TYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}
# The launcher's kernels by name: k = 1 (over even ranges, and over given ones: the class-wise
# max on class ranges), top-8, the largest top-k, 4 and the most classes (no host read: graph capture).
VARIANTS = {"argmax1": dict(reduction="argmax", slots=1), "ranges1": dict(reduction="argmax", slots=1, ranges=True),
            "topk8": dict(reduction="topk", slots=8), f"topk{MAX_SLOTS}": dict(reduction="topk", slots=MAX_SLOTS),
            "classwise4": dict(reduction="classwise", slots=4),
            f"classwise{MAX_SLOTS}": dict(reduction="classwise", slots=MAX_SLOTS)}


def compile_variant(arch, dtype, dim, metric, reduction, slots, wide_offsets=False, exact=False, ranges=False,
                    **tile):
    """The compiled kernel (``.asm["cubin"]``, ``.asm["ttir"]``, ``.metadata.shared``) for one
    launch shape; ``tile`` overrides ``launch_config`` as the launcher's keyword arguments do,
    ``wide_offsets`` as for inputs spanning 2^31 elements, ``exact`` float32 as at torch's
    "highest" matmul precision (else TF32), ``ranges`` with bank ranges given by their starts
    (``range_maxima``, the class-wise max on class ranges)."""
    if triton_version() < (3, 3):  # ASTSource(constexprs=...) arrived in triton 3.3
        raise RuntimeError(f"ahead-of-time compiles need triton >= 3.3, found {triton.__version__}")
    config = launch_config(dim, slots, **tile)
    options = {name: config.pop(name) for name in ("num_warps", "num_stages", "maxnreg") if name in config}
    options["enable_fp_fusion"] = FP_FUSION
    constants = dict(config, METRIC=METRIC_CODES[metric], REDUCTION=REDUCTIONS[reduction], SLOTS=slots,
                     INPUT_PRECISION="tf32" if dtype == "float32" and not exact else "ieee",
                     WIDE_OFFSETS=wide_offsets, RANGES=ranges)
    pointers = {"query_ptr": POINTER_TYPES[dtype], "reference_ptr": POINTER_TYPES[dtype],
                "ref_stat_ptr": "*fp32", "labels_ptr": "*i64", "split_starts_ptr": "*i64",
                "out_score_ptr": "*fp32", "out_index_ptr": "*i64"}
    # As the JIT specialises a call with [N, D] rows and a contiguous [M, D] bank:
    # unit strides become constants, pointers and D-multiples are 16-divisible.
    constants.update(stride_qd=1, stride_qw=1, stride_rd=1)
    divisible = set(pointers) | {"stride_qh", "stride_rm", "dim", "refs_per_split"}
    names = _match_kernel.arg_names
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in names}
    source = ASTSource(fn=_match_kernel, signature=signature,
                       constexprs={(names.index(name),): value for name, value in constants.items()},
                       attrs={(names.index(name),): [["tt.divisibility", 16]] for name in divisible})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=options)


def fitting_variant(arch, dtype, dim, metric, reduction, slots, shared_limit, exact=False, ranges=False):
    """(ladder step, compiled kernel) of the first ``shared_memory_ladder`` step whose shared
    memory is within ``shared_limit`` bytes, as the launcher picks on such a GPU; (None, None)
    when no step fits."""
    for step, tile in enumerate(shared_memory_ladder(dim, slots, {})):
        kernel = compile_variant(arch, dtype, dim, metric, reduction, slots, exact=exact, ranges=ranges, **tile)
        if kernel.metadata.shared <= shared_limit:
            return step, kernel
    return None, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(POINTER_TYPES))
    parser.add_argument("--dim", type=int, nargs="+", default=[128])
    parser.add_argument("--shared-limit", type=int,
                        help="bytes of shared memory a block may take (the card's opt-in limit): compile the "
                             "first step of the launcher's ladder that fits, as it would")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for dim in args.dim:
        for variant_name, variant in VARIANTS.items():
            name = f"sm{args.arch}-{args.dtype}-d{dim}-{variant_name}"
            if args.shared_limit is None:
                step, kernel = 0, compile_variant(args.arch, args.dtype, dim, "cosine", **variant)
            else:
                step, kernel = fitting_variant(args.arch, args.dtype, dim, "cosine", shared_limit=args.shared_limit,
                                               **variant)
            if kernel is None:
                raise SystemExit(f"{name}: no step of the ladder fits {args.shared_limit} bytes")
            (args.out / f"{name}.cubin").write_bytes(kernel.asm["cubin"])
            print(f"{name}: {kernel.metadata.shared} bytes of shared memory (ladder step {step})", flush=True)


if __name__ == "__main__":
    main()
