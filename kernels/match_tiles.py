"""Launch shapes of the Triton ``match`` kernel: tile sizes, pipeline depth, register cap,
and the steps down when a shape needs more shared memory than the GPU has.

Shared memory per program (triton 3.6-3.9, compiled by ``match_aot``) is about
``num_stages`` reference tiles of BLOCK_M x BLOCK_D, plus query tiles on sm_90.
float32 at D = 65..128 (BLOCK_D = 128) takes, at the default shape, 262 KB on sm_90 with
TF32 (197 KB exact) and 198 KB on sm_80: more than an H100 gives a block (227 KB), an
A100 (163 KB) or a 99 KB card (RTX 3090 and 4090, A6000, L40S). So the launcher tries the shapes of
``shared_memory_ladder`` in turn and keeps, per call signature, the first that loads.
"""
import os

import torch

MAX_RESIDENT_D = 128
NUM_STAGES = 3
MIN_BLOCK = 32  # the ladder halves BLOCK_M, then BLOCK_N, down to this

# Two 8-warp programs per SM for the dot argmax on sm_90 with a resident 64- or 128-channel
# query: on an H200 under triton 3.6 it took D=128 from 203 to 170 ms and D=64 from 159 to
# 141 ms (bench/results/NVIDIA-H200-triton-tiles-2026-11-26.md); l2 spilled and was slower.
# Whether it spills depends on the triton version (ahead-of-time sm_90 compiles of the dot
# argmax with int32 indices: none under 3.6; 56 bytes at D=128 and 8 at D=64 under 3.9); a
# compile that spills turns it off for its (device, dtype, D).
TWO_PROGRAMS_PER_SM = dict(num_stages=2, maxnreg=128)
_CAP_SPILLED = {}


def _next_power_of_two(value):
    return 1 << max(0, value - 1).bit_length()


def interpret_flag():
    return os.environ.get("TRITON_INTERPRET") == "1"


def pick_splits(num_row_blocks, num_refs, block_m, device):
    """Cut the bank into ranges when the row blocks alone cannot fill the GPU."""
    if device.type != "cuda":
        return 1
    target_programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    wanted = -(-target_programs // num_row_blocks)
    return max(1, min(wanted, -(-num_refs // (4 * block_m))))


def launch_config(dim, slots, interpret=False, block_n=None, block_m=None, num_warps=None, num_stages=None,
                  query_resident=None, maxnreg=None):
    """Compile-time tile shape of a launch: dict of BLOCK_N, BLOCK_M, BLOCK_D, SLOTS_PAD,
    QUERY_RESIDENT, num_warps, num_stages and, when given, maxnreg (the register cap
    per thread that lets two programs share an SM); the keyword arguments override them.

    Chosen so that no variant spills registers on sm_80 or sm_90 (checked in CI
    by compiling ahead of time, ``match_aot``). Sweeps on an H200 with triton 3.6
    (``bench/tune_triton.py``) found two faster argmax shapes that are not the
    default: 256x128 tiles (spill), and two programs per SM (2 stages, maxnreg=128:
    dot 203 -> 170 ms at D=128; spills depend on the triton version, see
    ``TWO_PROGRAMS_PER_SM``; l2 spilled and was slower). The launcher takes the second for
    the dot argmax on sm_90 where it compiles without spills (``TWO_PROGRAMS_PER_SM``).
    """
    slots_pad = _next_power_of_two(slots)
    resident = dim <= MAX_RESIDENT_D if query_resident is None else query_resident
    block_d = max(16, _next_power_of_two(dim)) if resident else 64
    if interpret:
        block_n, block_m = block_n or 32, block_m or 32
    # Top-k and class-wise rows keep slots_pad scores in registers: smaller tiles.
    if slots_pad == 1:
        default_n, default_m = 128, 128
    elif slots_pad <= 32:
        default_n, default_m = 64, 64
    else:
        default_n, default_m = 32, 64 if resident else 128
    block_n, block_m = block_n or default_n, block_m or default_m
    # On 4 warps under triton 3.6 (torch 2.11), 64 slots beside a resident query
    # spill, and sm_80 top-8 at D=32 keeps an 8-byte stack frame.
    wide = block_n >= 128 or (slots_pad > 32 and resident) or (slots_pad > 1 and block_d <= 32)
    config = dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d, SLOTS_PAD=slots_pad,
                  QUERY_RESIDENT=resident, num_warps=num_warps or (8 if wide else 4),
                  num_stages=num_stages or NUM_STAGES)
    return config if maxnreg is None else dict(config, maxnreg=maxnreg)


def cap_key(query, ranges=False):
    return query.device, query.dtype, query.shape[1], ranges


def note_cap_spills(query, kernel, ranges=False):
    """Record whether the capped kernel (``TWO_PROGRAMS_PER_SM``) spilled for this query's
    (device, dtype, D), over even or given bank ranges (two compiles): a compile's spills do
    not change, and unknown counts as spilled."""
    _CAP_SPILLED.setdefault(cap_key(query, ranges), getattr(kernel, "n_spills", None) != 0)


def launch_tile(query, metric, reduction, tile, ranges=False):
    """The ``launch_config`` overrides a launch takes: ``tile`` when given; without any,
    ``TWO_PROGRAMS_PER_SM`` for the dot argmax (over even bank ranges, or given ones when
    ``ranges``) of a resident 64- or 128-channel query on sm_90 (where it was measured)
    unless its compile spilled, else none."""
    if tile or metric != "dot" or reduction != "argmax" or query.device.type != "cuda" or interpret_flag():
        return dict(tile)
    if not 32 < query.shape[1] <= MAX_RESIDENT_D:
        return {}
    capped = (torch.cuda.get_device_capability(query.device)[0] == 9
              and not _CAP_SPILLED.get(cap_key(query, ranges)))
    return dict(TWO_PROGRAMS_PER_SM) if capped else {}


def shared_memory_ladder(dim, slots, first):
    """``launch_config`` overrides to try in turn, ``first`` (the launch's own) then shapes
    needing less shared memory: two pipeline stages, a query streamed in 64-channel chunks,
    then BLOCK_M and BLOCK_N halved down to MIN_BLOCK. A list of dicts."""
    default = launch_config(dim, slots)
    step = {"num_stages": 2, "block_n": default["BLOCK_N"], "block_m": default["BLOCK_M"]}
    steps = [dict(first), dict(step)]
    if default["QUERY_RESIDENT"] and default["BLOCK_D"] > 64:
        step["query_resident"] = False
        steps.append(dict(step))
    for name in ("block_m", "block_n"):
        while step[name] > MIN_BLOCK:
            step[name] //= 2
            steps.append(dict(step))
    return steps
