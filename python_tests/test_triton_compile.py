"""The Triton kernel lowered for real GPUs, on a machine without one.

The interpreter checks the kernels' logic; this compiles every reduction with
the launcher's tile shapes for sm_80 and sm_90 (``refmatch.kernels.match_aot``)
and fails on register spills, which only a lowering shows.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from resources import assert_no_spills, resource_usage

pytest.importorskip("triton", minversion="3.3", reason="needs triton >= 3.3 (ahead-of-time compile API)")


def _run_python(arguments):
    """stdout of ``python ARGUMENTS`` run without TRITON_INTERPRET (a compile needs triton's
    real backend), which must succeed."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, *arguments], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _script_json(script, *arguments):
    """The JSON that ``script`` prints on its last line."""
    return json.loads(_run_python(["-c", script, *arguments]).strip().splitlines()[-1])


@pytest.mark.parametrize("arch", [80, 90])
def test_every_variant_compiles_without_spills(arch, tmp_path):
    _run_python(["-m", "refmatch.kernels.match_aot", "--arch", str(arch), "--dim", "32", "128", "256",
                 "--out", str(tmp_path)])
    cubins = sorted(tmp_path.glob("*.cubin"))
    assert len(cubins) == 3 * 6, [path.name for path in cubins]  # dims x variants
    for cubin in cubins:
        for (_, function), usage in resource_usage(cubin).items():
            assert_no_spills(f"{cubin.stem} {function}", usage)


@pytest.mark.parametrize("ranges", [False, True])
def test_two_programs_per_sm_keeps_the_register_cap(tmp_path, ranges):
    """The capped dot argmax (``TWO_PROGRAMS_PER_SM``), over even bank ranges or given ones (the
    class-wise max), compiles for sm_90 within 128 registers a thread. Whether it spills depends
    on the triton version; the launcher checks that itself."""
    cubin = tmp_path / "capped.cubin"
    script = ("import sys; from pathlib import Path\n"
              "from refmatch.kernels.match_tiles import TWO_PROGRAMS_PER_SM\n"
              "from refmatch.kernels.match_aot import compile_variant\n"
              "kernel = compile_variant(90, 'bfloat16', 128, 'dot', 'argmax', 1, ranges=sys.argv[2] == 'True',\n"
              "                         **TWO_PROGRAMS_PER_SM)\n"
              "Path(sys.argv[1]).write_bytes(kernel.asm['cubin'])\n")
    _run_python(["-c", script, str(cubin), str(ranges)])
    usages = list(resource_usage(cubin).values())
    assert len(usages) == 1 and usages[0]["REG"] <= 128, usages


# (compute capability, opt-in shared memory per block): RTX 3090 / A6000 class, A100, H100 / H200.
CARDS = [(86, 101376), (80, 166912), (90, 232448)]


@pytest.mark.parametrize("arch, shared_limit", CARDS)
def test_the_ladder_fits_every_card(arch, shared_limit):
    """float32 at D = 128 needs more shared memory than any of these cards has at the default
    shape; the launcher's shared-memory ladder reaches a shape that fits each, for k = 1 and
    top-8 in float32 (TF32, and exact for k = 1) and bfloat16, and keeps the default shape where
    it fits. Spills at the
    shapes it steps down to depend on the triton version (float32 on sm_86 keeps 16 bytes of
    stack under 3.6, none under 3.9), so they are not asserted; the default shapes' are above."""
    script = ("import json, sys\n"
              "from refmatch.kernels.match_aot import fitting_variant\n"
              "arch, limit = int(sys.argv[1]), int(sys.argv[2])\n"
              "steps = {}\n"
              "for dtype in ('float32', 'bfloat16'):\n"
              "    for dim in (128, 256):\n"
              "        for reduction, slots in (('argmax', 1), ('topk', 8)):\n"
              "            name = f'{dtype}-d{dim}-{reduction}{slots}'\n"
              "            step, kernel = fitting_variant(arch, dtype, dim, 'cosine', reduction, slots, limit)\n"
              "            steps[name] = step\n"
              "steps['exact-float32-d128-argmax1'] = fitting_variant(arch, 'float32', 128, 'cosine', 'argmax', 1, "
              "limit, exact=True)[0]\n"
              "print(json.dumps(steps))\n")
    steps = _script_json(script, str(arch), str(shared_limit))
    assert None not in steps.values(), steps
    if shared_limit >= 166912:  # A100, H100: bfloat16 keeps the measured default shape
        assert all(step == 0 for name, step in steps.items() if name.startswith("bfloat16")), steps


def test_wide_offsets_reach_the_lowered_pointer_arithmetic():
    """With WIDE_OFFSETS the query and bank tiles' pointer offsets are int64 in Triton's IR, for
    a resident (D = 128) and a streamed (D = 256) query; without, they stay int32 (registers)."""
    script = textwrap.dedent(r"""
        import json, re
        from refmatch.kernels.match_aot import compile_variant
        types = {}
        for dim in (128, 256):
            for wide in (False, True):
                ttir = compile_variant(90, "bfloat16", dim, "cosine", "argmax", 1, wide_offsets=wide).asm["ttir"]
                found = re.findall(r"tt.addptr .*: tensor<\d+x\d+x!tt.ptr<bf16>>, tensor<\d+x\d+x(i\d+)>", ttir)
                types[f"{dim} {wide}"] = sorted(set(found))
        print(json.dumps(types))
        """)
    types = _script_json(script)
    for dim in (128, 256):  # plain: the query rows' offsets are int64 already, the strided steps int32
        assert types[f"{dim} False"] == ["i32", "i64"] and types[f"{dim} True"] == ["i64"], types


def test_every_reduction_loop_is_software_pipelined():
    """The tile loop streams the bank through shared memory with asynchronous copies issued
    stages ahead, for top-k and class-wise too: their insertion and per-class loops sit inside
    a branch, because a loop directly in the tile loop's body stops triton's pipeliner (the
    top-k and class-wise tiles each waited for their own load before)."""
    script = textwrap.dedent(r"""
        import json
        from refmatch.kernels.match_aot import VARIANTS, compile_variant
        found = {}
        for arch in (80, 90):
            for name, variant in VARIANTS.items():
                ttgir = compile_variant(arch, "bfloat16", 128, "dot", **variant).asm["ttgir"]
                found[f"sm{arch} {name}"] = ttgir.count("ttg.async_copy_global_to_local")
        print(json.dumps(found))
        """)
    copies = _script_json(script)
    assert len(copies) == 2 * 6 and all(count >= 2 for count in copies.values()), copies  # prologue and loop


def test_full_tiles_take_no_per_score_mask():
    """At the k = 1 loop's top level (every tile) the [BLOCK_N, BLOCK_M] scores get no compare
    or select: the NaN and padding masks there cost 3 of ~6 instructions per score on sm_90
    (NaN is left to maxnum; padding is masked inside the branch for a partial tile). The
    per-reference terms load unmasked from their padded copy."""
    script = textwrap.dedent(r"""
        import json, re
        from refmatch.kernels.match_aot import compile_variant
        found = {}
        for metric in ("dot", "l2"):
            lines = compile_variant(90, "bfloat16", 64, metric, "argmax", 1).asm["ttir"].splitlines()
            start = next(i for i, line in enumerate(lines) if "scf.for %m0" in line)
            depth = len(lines[start]) - len(lines[start].lstrip()) + 2
            body = []
            for line in lines[start + 1:]:
                indent = len(line) - len(line.lstrip())
                if indent < depth:
                    break
                if indent == depth:
                    body.append(line.strip())
            found[metric] = {
                "masks": [line for line in body if re.search(r"arith\.(select|cmpf) .*tensor<128x128x", line)],
                "stat_loads": [line for line in lines if re.search(r"tt\.load .*tensor<128x!tt\.ptr<f32>>", line)],
                "branches": sum(line.startswith("%") and "scf.if" in line for line in body)}
        print(json.dumps(found))
        """)
    found = _script_json(script)
    for metric, parts in found.items():
        assert parts["masks"] == [] and parts["branches"] >= 2, (metric, parts)  # partial-tile mask, locate
    stat_loads = found["l2"]["stat_loads"]
    assert len(stat_loads) == 2 and all(re.match(r"\S+ = tt\.load %\S+ :", line.strip()) for line in stat_loads)
