"""The CUDA build without a GPU: kernel resources, launch plans, fragment layouts (argument checks:
test_cuda_launch_checks)."""
import re
from pathlib import Path

import pytest

from refmatch.backends.hopper_variants import HOPPER_VARIANTS, documented_hopper_kernel
from resources import assert_no_spills, resource_usage

_C = pytest.importorskip("refmatch._C", reason="refmatch._C is not built")
needs_cuda_build = pytest.mark.skipif(not _C.build_info()["cuda"], reason="_C built without CUDA")
H100_SMEM, A100_SMEM = 227 * 1024, 163 * 1024  # opt-in shared memory per block


@needs_cuda_build
def test_match_kernels_do_not_spill():
    resources = resource_usage(_C.__file__)
    kernels = {key: usage for key, usage in resources.items() if "match_kernel" in key[1]}
    archs = {arch for arch, _ in kernels}
    built = {f"sm_{arch}" for arch in _C.build_info()["cuda_archs"].split(",")}
    assert archs == built, f"match kernels for {sorted(archs)}, built for {sorted(built)}"
    assert len(kernels) == 8 * len(archs), "k = 1 and top-k kernels per fp16, bf16, tf32, 3xtf32 and arch"
    wgmma = {key for key in resources if "match_sm90_kernel" in key[1] and key[0] == "sm_90a"}
    # k = 1 and top-k: 128 and 256 rows, SS and RS; for fp16 and bf16
    assert len(wgmma) == (16 if "sm_90a" in built else 0), "the Hopper kernels"
    for (arch, name), usage in resources.items():
        assert_no_spills(f"{name} on {arch}", usage)
        print(f"{arch} REG:{usage['REG']:>3} {name}")
    for key in wgmma:
        assert_register_handoff_fits(key[1], resources[key]["REG"])


def assert_register_handoff_fits(name, registers):
    """The wgmma kernels' producer warpgroup gives registers up (setmaxnreg.dec) and the two consumer
    ones claim them (setmaxnreg.inc), out of the CTA's allocation at launch: 384 threads times the
    compiled count. A claim beyond it waits forever, a hang on the GPU, so the build must allocate
    at least what the claims add up to."""
    header = (Path(__file__).parents[1] / "csrc/include/refmatch/match_kernel_sm90.cuh").read_text()
    producer, consumer = map(int, re.search(r"kProducerRegisters = (\d+), kConsumerRegisters = (\d+)", header).groups())
    claimed = 128 * producer + 256 * consumer
    assert 384 * registers >= claimed, (f"{name}: compiled for {registers} registers a thread, 384 x {registers} = "
                                        f"{384 * registers} < the {claimed} its warpgroups claim")


@pytest.mark.parametrize("dim, element_bytes, resident", [
    (1, 2, True), (128, 2, True), (256, 2, True), (256, 4, True), (704, 2, True), (768, 2, False), (352, 4, True), (384, 4, False),
])
def test_layout_keeps_query_resident_when_it_fits(dim, element_bytes, resident):
    layout = _C.match_layout(dim, element_bytes, H100_SMEM)
    assert layout["dim_chunks"] == -(-dim * element_bytes // 128)
    assert layout["query_resident"] is resident
    assert layout["smem_bytes"] <= H100_SMEM
    assert layout["threads"] == 128 and layout["block_n"] % 32 == 0 and layout["block_m"] % 16 == 0


def test_layout_streams_query_when_resident_tile_does_not_fit():
    streamed = _C.match_layout(100_000, 4, A100_SMEM)
    assert not streamed["query_resident"] and streamed["smem_bytes"] <= 100 * 1024  # fits sm_86/89 too
    assert streamed["smem_bytes"] == _C.match_layout(10**7, 2, A100_SMEM)["smem_bytes"]  # independent of D


@pytest.mark.parametrize("dim, dtype, copy_bytes, eligible", [
    (128, 2, 16, True), (256, 1, 16, True), (8, 2, 16, True), (72, 2, 16, True),
    (264, 2, 16, False),  # the query tile would not stay resident
    (36, 2, 16, False),   # D not in whole 16-byte units
    (128, 0, 16, False),  # float32 stays on mma.sync
    (128, 2, 8, False),   # reference rows not 16-byte aligned
])
def test_hopper_kernel_eligibility_and_layout(dim, dtype, copy_bytes, eligible):
    layout = _C.hopper_layout(dim, dtype, copy_bytes, H100_SMEM)
    assert layout["eligible"] is eligible
    assert layout["threads"] == 384 and layout["block_n"] == 128 and layout["block_m"] == 128
    if eligible:
        assert layout["smem_bytes"] <= H100_SMEM
        # A stage always holds the same chunk, and two tiles fit in flight: the
        # lagging consumer can then never block the producer (no deadlock).
        assert layout["stages"] % layout["dim_chunks"] == 0 and layout["stages"] >= 2 * layout["dim_chunks"]


@pytest.mark.parametrize("range_start", [0, 1, 2, 3, 587, 1000, 2**31 - 129])
def test_tma_box_of_metric_terms_starts_aligned_and_covers_the_tile(range_start):
    # Class ranges start at any row; a TMA box at an unaligned float was an illegal
    # instruction on an H200 (session 22). Each tile's box starts 16-byte aligned and
    # still holds its 128 rows, inside the stage's room for terms.
    layout = _C.hopper_layout(128, 2, 16, H100_SMEM, rows=256)
    for m0 in (range_start, range_start + layout["block_m"]):
        lead = _C.hopper_stat_lead(m0)
        assert (m0 - lead) * 4 % 16 == 0 and 0 <= lead < 4
        assert lead + layout["block_m"] <= layout["stat_box_rows"]
    assert layout["stat_offset"] + 4 * layout["stat_box_rows"] <= layout["stage_bytes"]
    assert layout["stat_box_rows"] * 4 % 16 == 0 and layout["stat_box_rows"] <= 256  # TMA box limits


@pytest.mark.parametrize("dim_chunks", [1, 2, 3, 4])
def test_consumers_walk_the_ring_of_stages_as_the_producer_fills_it(dim_chunks):
    # The producer fills step s = tile * dim_chunks + chunk into stage s % stages in round
    # s // stages; a consumer walks its tiles' stages without dividing, and must land on
    # the same stage and barrier parity (a wrong parity would hang the kernel).
    stages = _C.hopper_layout(64 * dim_chunks, 2, 16, H100_SMEM)["stages"]
    walked = _C.hopper_tile_stages(dim_chunks, 5 * stages)
    for tile, (first, parity) in enumerate(walked):
        for chunk in range(dim_chunks):
            step = tile * dim_chunks + chunk
            assert (first + chunk, parity) == (step % stages, step // stages % 2)


def test_hopper_kernel_needs_its_shared_memory():
    assert _C.hopper_layout(256, 2, 16, H100_SMEM)["eligible"]
    assert not _C.hopper_layout(256, 2, 16, 160 * 1024)["eligible"]


@pytest.mark.parametrize("dim, smem_limit, block_n", [
    (8, H100_SMEM, 256), (64, H100_SMEM, 256), (128, H100_SMEM, 256), (192, H100_SMEM, 256),
    (200, H100_SMEM, 128),  # a 256-row query tile of 4 chunks does not fit beside the stages
    (256, H100_SMEM, 128),
    (128, 180 * 1024, 128),  # nor does D=128's on a smaller card
])
def test_hopper_kernel_takes_256_rows_where_they_fit(dim, smem_limit, block_n):
    layout = _C.hopper_layout(dim, 2, 16, smem_limit, rows=256)
    assert layout["block_n"] == block_n
    assert layout["smem_bytes"] <= smem_limit
    assert layout["stages"] % layout["dim_chunks"] == 0 and layout["stages"] >= 2 * layout["dim_chunks"]
    # Each query chunk holds block_n rows of 128 bytes, all before the stages.
    assert layout["smem_bytes"] >= layout["dim_chunks"] * block_n * 128 + layout["stages"] * 128 * 128
    assert _C.hopper_layout(dim, 2, 16, smem_limit)["block_n"] == 128  # the default asks for 128
    for rows in (64, 384, 512):  # only 128 and 256 are tiles, as the launcher's check_hopper_rows says
        with pytest.raises(ValueError, match=f"rows must be 128 or 256, got {rows}"):
            _C.hopper_layout(dim, 2, 16, smem_limit, rows=rows)


@pytest.mark.parametrize("dim, rows, fits", [
    (64, 128, True), (128, 128, True), (256, 128, True),  # 128 rows: every D, 64 registers at most
    (64, 256, True), (72, 256, False), (128, 256, False),  # 256 rows: one chunk beside 128 accumulators
    (256, 256, True),  # no 256-row tile at D=256: it runs 128 rows, which hold the query
])
def test_hopper_query_stays_in_registers_where_they_suffice(dim, rows, fits):
    assert _C.hopper_layout(dim, 2, 16, H100_SMEM, rows=rows)["query_fits_registers"] is fits


@pytest.mark.parametrize("dim, rows, most_slots", [(64, 256, 19), (128, 256, 8), (192, 256, 9), (256, 256, 17)])
def test_topk_lists_go_to_shared_memory_where_they_fit_beside_the_pipeline(dim, rows, most_slots):
    """Lists of k slots (float score, int64 index) per row after the barriers, 16-byte aligned;
    the pipeline keeps every stage (D = 256 runs 128 rows). k = 1 keeps no list."""
    layout = _C.hopper_layout(dim, 2, 16, H100_SMEM, rows=rows, k=most_slots)
    assert layout["lists_fit"] and not _C.hopper_layout(dim, 2, 16, H100_SMEM, rows=rows, k=most_slots + 1)["lists_fit"]
    assert layout["smem_bytes_with_lists"] - layout["smem_bytes"] == layout["block_n"] * most_slots * 12
    assert layout["list_offset"] % 16 == 0 and layout["smem_bytes"] == 1024 + layout["list_offset"]
    assert layout["list_offset"] >= (layout["dim_chunks"] * layout["block_n"] * 128
                                     + layout["stages"] * (layout["stage_bytes"] + 16))
    assert layout["stages"] == _C.hopper_layout(dim, 2, 16, H100_SMEM, rows=rows)["stages"]
    assert not _C.hopper_layout(dim, 2, 16, H100_SMEM, rows=rows, k=1)["lists_fit"]


@pytest.mark.parametrize("variant", list(HOPPER_VARIANTS))
def test_documented_kernel_choice_is_the_plans(variant):
    """The rule the scripts and sm_90 tests check the kernel against is the C++ plan's."""
    rows, query, loads = HOPPER_VARIANTS[variant]
    for dim in range(8, 257, 8):
        layout = _C.hopper_layout(dim, 2, 16, H100_SMEM, rows=rows)
        registers = query == "registers" and layout["query_fits_registers"]
        tma = loads == "tma" and _C.hopper_tma_eligible(1 << 20, dim, 1 << 20, dim, 1 << 21)  # a contiguous bank
        planned = ("wgmma" + ("-256" if layout["block_n"] == 256 else "") + ("-rs" if registers else "")
                   + ("-tma" if tma else ""))
        assert documented_hopper_kernel(variant, dim) == planned, dim


@pytest.mark.parametrize("num_refs, dim, reference, stride_m, ref_stat, eligible", [
    (1 << 20, 128, 1 << 20, 128, 1 << 21, True),   # a contiguous bf16 bank
    (1 << 20, 128, 1 << 20, 128, 0, True),         # dot: no metric terms
    ((1 << 31) - 1, 8, 1 << 20, 8, 0, True),       # the last row TMA's int32 coordinates reach
    (1 << 31, 8, 1 << 20, 8, 0, False),
    (1 << 20, 128, (1 << 20) + 8, 128, 0, False),  # an 8-byte aligned base
    (1 << 20, 128, 1 << 20, 132, 0, False),        # 264-byte rows
    (1 << 20, 128, 1 << 20, 64, 0, False),         # rows overlap (stride below D)
    (1 << 20, 128, 1 << 20, 1 << 39, 0, False),    # a row stride of 2^40 bytes
    (1 << 20, 128, 1 << 20, 128, (1 << 21) + 4, False),  # a sliced ref_stat
])
def test_tma_loads_need_aligned_rows_and_int32_coordinates(num_refs, dim, reference, stride_m, ref_stat, eligible):
    assert _C.hopper_tma_eligible(num_refs, dim, reference, stride_m, ref_stat) is eligible


def test_swizzle_permutes_units_within_rows_and_spreads_atoms_over_banks():
    for row in range(24):
        offsets = {_C.swizzle128_offset(row, unit) for unit in range(8)}
        assert offsets == {row * 128 + 16 * unit for unit in range(8)}
    # unit 0 of the 8 rows of an atom sits in 8 different 16-byte bank groups
    assert len({_C.swizzle128_offset(row, 0) % 128 for row in range(8)}) == 8


@pytest.mark.parametrize("address, stride_m, stride_d, element_bytes, expected", [
    (1 << 20, 128, 1, 2, 16),   # bf16 D=128 rows, aligned
    (1 << 20, 36, 1, 2, 8),     # 72-byte rows
    (1 << 20, 33, 1, 4, 4),     # fp32 odd D
    (1 << 20, 33, 1, 2, 0),     # fp16 odd D: 2-byte aligned rows, element loads
    ((1 << 20) + 4, 128, 1, 4, 4),  # sliced base pointer
    (1 << 20, 1, 64, 2, 0),     # transposed bank: D not unit stride
])
def test_reference_copy_width(address, stride_m, stride_d, element_bytes, expected):
    assert _C.reference_copy_bytes(address, stride_m, stride_d, element_bytes) == expected


@pytest.mark.parametrize("rows, refs, ctas, expected", [
    (262144, 1 << 20, 132 * 3, 1),   # N alone fills an H100
    (128, 1 << 20, 132 * 3, 391),    # one row block: ~one split per CTA slot, none empty
    (1, 100, 264, 1),                # tiny bank: each split keeps >= 4 tiles
    (1000, 2560, 264, 10),           # capped by the bank (10 splits of 4 tiles)
    (0, 10, 8, 1),
])
def test_split_plan(rows, refs, ctas, expected):
    splits = _C.plan_match_splits(rows, refs, ctas)
    assert splits == expected
    per_split = _C.match_refs_per_split(refs, splits)
    assert per_split % _C.match_layout(1, 2, H100_SMEM)["block_m"] == 0
    hopper_splits = _C.plan_match_splits(rows, refs, ctas, 128)  # the wgmma kernel's 128-row tiles
    hopper_per_split = _C.match_refs_per_split(refs, hopper_splits, 128)
    assert hopper_per_split % 128 == 0 and hopper_splits <= splits
    assert (hopper_splits - 1) * hopper_per_split < refs <= hopper_splits * hopper_per_split or hopper_splits == 1
    assert (splits - 1) * per_split < refs <= splits * per_split or splits == 1


def test_split_plan_counts_row_blocks_of_the_kernels_rows():
    # 256 query rows per CTA: half the row blocks, so twice the splits fill the same CTA slots.
    assert _C.plan_match_splits(1024, 1 << 20, 132, 128, 128) == 17
    assert _C.plan_match_splits(1024, 1 << 20, 132, 128, 256) == 33
    assert _C.plan_match_splits(132 * 256, 1 << 20, 132, 128, 256) == 1


@pytest.mark.parametrize("first_row", [0, 16, 48, 112, 240])
@pytest.mark.parametrize("k", range(4))
def test_query_fragments_follow_the_a_fragment_layout(first_row, k):
    # ldmatrix.x4: lanes 8j..8j+7 give the rows of matrix j; lane t receives from matrix j
    # row t/4, elements 2 (t%4) and +1, into register j. The RS wgmma's A fragment wants in
    # register j row t/4 + 8 (j%2) and columns 2 (t%4) + 8 (j/2) (+1) of the 16x16 block.
    where = {}  # byte offset in the swizzled chunk -> (row, column) stored there
    for row in range(first_row, first_row + 16):
        for unit in range(8):
            for element in range(8):
                where[_C.swizzle128_offset(row, unit) + 2 * element] = (row, 8 * unit + element)
    for lane in range(32):
        for register in range(4):
            source = _C.query_fragment_offset(first_row, 8 * register + lane // 4, k) + 4 * (lane % 4)
            for half in range(2):
                expected = (first_row + lane // 4 + 8 * (register % 2),
                            16 * k + 2 * (lane % 4) + 8 * (register // 2) + half)
                assert where[source + 2 * half] == expected


@needs_cuda_build
def test_wgmma_kernels_are_not_serialized(tmp_path):
    # When ptxas cannot keep the wgmma operands in place it serializes the MMAs: no error,
    # no spill, a large slowdown, reported only in its -v output ("Potential Performance
    # Loss: wgmma.mma_async instructions are serialized ...").
    import shutil
    import subprocess
    from pathlib import Path

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on the PATH")
    source = Path(__file__).resolve().parents[1] / "csrc"
    result = subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90a", f"-I{source / 'include'}",
                             '-DREFMATCH_CUDA_ARCHS="90a"', "-Xptxas", "-v", "-c", str(source / "match_cuda.cu"),
                             "-o", str(tmp_path / "match_cuda.o")], capture_output=True, text=True, timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-2000:]
    assert report.count("match_sm90_kernel") >= 12, "every wgmma variant compiled"
    assert "serialized" not in report and "Performance Loss" not in report, report[-2000:]
