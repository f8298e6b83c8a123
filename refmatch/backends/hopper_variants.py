"""The Hopper (wgmma) kernel's variants and the environment variables that pick one.

Three settings, each read at every call and refused by name when unknown:

- ``REFMATCH_CUDA_HOPPER_ROWS``: query rows per CTA, 256 (the default; 128 where D > 192,
  as that tile does not fit beside the pipeline) or 128;
- ``REFMATCH_CUDA_HOPPER_QUERY``: "shared" (the default) or "registers" (RS wgmma; any D
  with 128 rows, D <= 64 with 256);
- ``REFMATCH_CUDA_HOPPER_LOADS``: "tma" (the default since session 22: one producer thread
  issues TMA box loads; needs a 16-byte aligned bank with M < 2^31, else cp.async; 1.28x
  faster than cp.async at bf16 262144 x 1048576 x 128 on an H200) or "cp.async" (a
  producer warpgroup copies the bank).

A variant's name is the one ``cuda_backend.kernel_name`` reports: "wgmma", then "-256"
(256 query rows), "-rs" (query in registers) and "-tma" (TMA loads).

Top-k (k = 2 .. 64) runs the mma.sync kernel unless ``REFMATCH_CUDA_HOPPER_TOPK=wgmma``,
which takes the variant the three settings pick with the top-k epilogue. It is opt-in until
a GPU run has checked it (written in sessions 31 and 32 on machines without a GPU; gpu_suite.sh
checks, tests and times it). There ``REFMATCH_CUDA_HOPPER_TOPK_LISTS`` says where the rows' lists
live: "shared" (the default: in shared memory where they fit beside the pipeline, on an H100 or
H200 k <= 19 at D <= 64, 8 at D <= 128, 9 at D <= 192, 17 at D = 256; else in the outputs) or
"global" (in the outputs throughout).
"""
from ..choices import check_choice
from .settings import environment, setting

HOPPER_ROWS = (256, 128)  # query rows per CTA; the first is the default
HOPPER_QUERY = ("shared", "registers")  # where the query operand lives; the first is the default
HOPPER_LOADS = ("tma", "cp.async")  # how the producer loads the bank; the first is the default
HOPPER_TOPK = ("mma.sync", "wgmma")  # the kernel of top-k calls on sm_90; the first is the default
HOPPER_TOPK_LISTS = ("shared", "global")  # where the wgmma top-k keeps its lists; the first is the default
WIDEST_256_ROWS = 192  # the widest D whose 256-row query tile fits beside the pipeline (H100, H200)
WIDEST_256_ROWS_IN_REGISTERS = 64  # the widest D whose 256 query rows fit in a consumer's registers
SETTINGS = ("REFMATCH_CUDA_HOPPER_ROWS", "REFMATCH_CUDA_HOPPER_QUERY", "REFMATCH_CUDA_HOPPER_LOADS")


def wgmma_name(rows, query, loads):
    return ("wgmma" + ("-256" if rows == 256 else "") + ("-rs" if query == "registers" else "")
            + ("-tma" if loads == "tma" else ""))


# Variants by name: (rows, query, loads); the first is the default.
HOPPER_VARIANTS = {wgmma_name(rows, query, loads): (rows, query, loads)
                   for loads in HOPPER_LOADS for query in HOPPER_QUERY for rows in HOPPER_ROWS}


def hopper_switched_off():
    """``REFMATCH_CUDA_HOPPER=0``: every call stays on the mma.sync kernel ("1", the default: the
    wgmma kernel where it serves the call)."""
    return setting("REFMATCH_CUDA_HOPPER", ("1", "0")) == "0"


def rows_setting():
    """``REFMATCH_CUDA_HOPPER_ROWS`` as an int: 256 (the default) or 128."""
    return int(setting("REFMATCH_CUDA_HOPPER_ROWS", [str(rows) for rows in HOPPER_ROWS]))


def hopper_query_in_registers():
    """Whether the wgmma kernel holds its query in registers: ``REFMATCH_CUDA_HOPPER_QUERY``
    "registers" (RS wgmma, where D allows) or "shared" (the default)."""
    return setting("REFMATCH_CUDA_HOPPER_QUERY", HOPPER_QUERY) == "registers"


def hopper_tma_loads():
    """Whether the wgmma kernel loads the bank through TMA: ``REFMATCH_CUDA_HOPPER_LOADS``
    "tma" (the default, where the bank allows) or "cp.async"."""
    return setting("REFMATCH_CUDA_HOPPER_LOADS", HOPPER_LOADS) == "tma"


def hopper_topk():
    """Whether top-k calls take the wgmma kernel: ``REFMATCH_CUDA_HOPPER_TOPK`` "wgmma", or
    "mma.sync" (the default)."""
    return setting("REFMATCH_CUDA_HOPPER_TOPK", HOPPER_TOPK) == "wgmma"


def hopper_shared_lists():
    """Whether the wgmma top-k keeps its lists in shared memory where they fit:
    ``REFMATCH_CUDA_HOPPER_TOPK_LISTS`` "shared" (the default) or "global"."""
    return setting("REFMATCH_CUDA_HOPPER_TOPK_LISTS", HOPPER_TOPK_LISTS) == "shared"


def hopper_topk_lists(where):
    """Inside the block the wgmma top-k keeps its lists ``where`` ("shared" or "global",
    ``REFMATCH_CUDA_HOPPER_TOPK_LISTS``); the variable is restored after."""
    check_choice("lists", where, HOPPER_TOPK_LISTS)
    return environment({"REFMATCH_CUDA_HOPPER_TOPK_LISTS": where})


def hopper_topk_kernel(kernel):
    """Inside the block top-k calls on sm_90 run ``kernel`` ("mma.sync" or "wgmma",
    ``REFMATCH_CUDA_HOPPER_TOPK``); the variable is restored after."""
    check_choice("kernel", kernel, HOPPER_TOPK)
    return environment({"REFMATCH_CUDA_HOPPER_TOPK": kernel})


def hopper_kernel(variant=None):
    """Inside the block the cuda backend runs ``variant`` where a call allows it:
    "mma.sync" (``REFMATCH_CUDA_HOPPER=0``) or a ``HOPPER_VARIANTS`` name, which sets the
    three ``SETTINGS``; None turns the wgmma kernel on with the settings as they are. The
    variables are restored after."""
    if variant is not None:
        check_choice("variant", variant, ("mma.sync", *HOPPER_VARIANTS))
    settings = {"REFMATCH_CUDA_HOPPER": "0" if variant == "mma.sync" else "1"}
    if variant in HOPPER_VARIANTS:
        settings.update(zip(SETTINGS, map(str, HOPPER_VARIANTS[variant])))
    return environment(settings)


def documented_hopper_kernel(variant, dim):
    """The wgmma kernel that ``variant``'s setting runs at D = dim on a contiguous bank, for
    k = 1 and top-k alike, by the documented rule (the scripts and tests check ``kernel_name``
    against it): 256-row tiles up to ``WIDEST_256_ROWS``; the query in registers at any D with
    128 rows, up to ``WIDEST_256_ROWS_IN_REGISTERS`` with 256; TMA loads as asked."""
    rows, query, loads = HOPPER_VARIANTS[variant]
    rows = 256 if rows == 256 and dim <= WIDEST_256_ROWS else 128
    fits = rows == 128 or dim <= WIDEST_256_ROWS_IN_REGISTERS
    return wgmma_name(rows, query if fits else "shared", loads)


def default_hopper_kernels():
    """The wgmma kernels the default setting runs, by D: ("wgmma-256-tma", "wgmma-tma")."""
    default = next(iter(HOPPER_VARIANTS))
    return tuple(dict.fromkeys(documented_hopper_kernel(default, dim) for dim in range(8, 257, 8)))
