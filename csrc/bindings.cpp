// pybind11 module refmatch._C. Torch-free by design: it never includes or
// links libtorch, so one binary serves every torch version and builds on
// machines whose torch has no CUDA.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "refmatch/best.h"
#include "refmatch/cuda_runtime_status.h"
#include "refmatch/match_cuda.h"
#include "refmatch/match_plan.h"
#include "refmatch/match_plan_sm90.h"
#include "refmatch/topk_list.h"

namespace py = pybind11;

// csrc/bindings_cpu.cpp: the CPU passes (bfloat16 screen tile, fused top-k).
void bind_cpu_passes(py::module_& m);
// csrc/epilogue_host.cpp: the CUDA kernels' epilogues run on the host (stream_tiles).
void bind_epilogue_host(py::module_& m);
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = REFMATCH_VERSION;
  info["compiler"] = REFMATCH_COMPILER;
  info["cuda_runtime_version"] = refmatch::cuda_runtime_version();
#ifdef REFMATCH_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(REFMATCH_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_archs"] = std::string();
#endif
  return info;
}

// Host check of the merge the split-M kernels use: folds partials [S, N]
// over S with the shared tie rule.
std::pair<FloatArray, IndexArray> merge_partial_bests(FloatArray scores, IndexArray indices) {
  if (scores.ndim() != 2 || indices.ndim() != 2 || scores.shape(0) != indices.shape(0) ||
      scores.shape(1) != indices.shape(1)) {
    throw py::value_error("scores and indices must both be [splits, rows] with equal shapes");
  }
  const int64_t splits = scores.shape(0), rows = scores.shape(1);
  FloatArray out_scores(rows);
  IndexArray out_indices(rows);
  auto s = scores.unchecked<2>();
  auto i = indices.unchecked<2>();
  auto os = out_scores.mutable_unchecked<1>();
  auto oi = out_indices.mutable_unchecked<1>();
  for (int64_t r = 0; r < rows; ++r) {
    refmatch::Best best = refmatch::empty_best();
    for (int64_t p = 0; p < splits; ++p) best = refmatch::merge(best, {s(p, r), i(p, r)});
    os(r) = best.score;
    oi(r) = best.index;
  }
  return {out_scores, out_indices};
}

// Launch of the fused CUDA match kernel from raw pointers (see match_cuda.h).
void match_argmax(uintptr_t query, int dtype, int64_t batch, int64_t dim, int64_t height,
                  int64_t width, std::array<int64_t, 4> query_strides, uintptr_t reference,
                  int64_t num_refs, std::array<int64_t, 2> reference_strides, uintptr_t ref_stat,
                  int metric, bool allow_tf32, uintptr_t out_score, uintptr_t out_index,
                  int64_t splits, uintptr_t partial_score, uintptr_t partial_index, uintptr_t stream,
                  int device, int64_t hopper_rows, uintptr_t split_starts, int64_t k,
                  bool hopper_query_registers, bool hopper_tma_loads, int ablate, bool hopper_shared_lists) {
  // Aggregate order is MatchArgs' field order.
  refmatch::match_argmax(refmatch::MatchArgs{
      query, dtype, batch, dim, height, width, query_strides, reference, num_refs,
      reference_strides, ref_stat, metric, allow_tf32, out_score, out_index, splits, partial_score,
      partial_index, stream, device, hopper_rows, split_starts, k, hopper_query_registers, hopper_tma_loads,
      ablate, hopper_shared_lists});
}

// Tile constants and the shared-memory plan for D channels of `element_bytes`
// (host check of match_plan.h; also what tests use to place ties across tiles).
// Plan helpers take Python ints: a value the plan divides by or sizes with must be in range,
// or the call raises ValueError (a zero divisor would kill the interpreter).
void require_at_least(const char* name, int64_t value, int64_t least) {
  if (value < least) {
    throw py::value_error(std::string(name) + " must be >= " + std::to_string(least) + ", got " +
                          std::to_string(value));
  }
}

py::dict match_layout(int64_t dim, int element_bytes, int64_t smem_limit) {
  using Tile = refmatch::MatchTile;
  require_at_least("dim", dim, 1);
  if (element_bytes != 2 && element_bytes != 4) {
    throw py::value_error("element_bytes must be 2 or 4, got " + std::to_string(element_bytes));
  }
  const int64_t chunks = refmatch::match_dim_chunks(dim, element_bytes);
  const bool resident = refmatch::match_query_resident(chunks, smem_limit);
  py::dict layout;
  layout["block_n"] = Tile::kBlockN;
  layout["block_m"] = Tile::kBlockM;
  layout["stages"] = Tile::kStages;
  layout["threads"] = Tile::kThreads;
  layout["dim_chunks"] = chunks;
  layout["query_resident"] = resident;
  layout["smem_bytes"] = refmatch::match_smem_layout(chunks, resident).total_bytes;
  return layout;
}

// Tile constants, shared-memory plan and eligibility of the Hopper kernel asked
// for `rows` query rows per CTA (host check of match_plan_sm90.h), and whether the
// query would stay in registers when asked.
py::dict hopper_layout(int64_t dim, int dtype, int ref_copy_bytes, int64_t smem_limit, int64_t rows, int64_t k) {
  using Tile = refmatch::HopperTile;
  require_at_least("dim", dim, 1);
  if (rows != refmatch::hopper_block_n(1) && rows != refmatch::hopper_block_n(2)) {
    throw py::value_error("rows must be 128 or 256, got " + std::to_string(rows));
  }
  const int64_t chunks = refmatch::match_dim_chunks(dim, 2);
  const int row_blocks = refmatch::hopper_row_blocks(dim, rows, smem_limit);
  require_at_least("k", k, 1);
  const refmatch::HopperSmemLayout plan = refmatch::hopper_smem_layout(chunks, row_blocks);
  py::dict layout;
  layout["eligible"] = refmatch::hopper_eligible(dim, dtype, ref_copy_bytes, smem_limit);
  layout["block_n"] = refmatch::hopper_block_n(row_blocks);
  layout["query_fits_registers"] = refmatch::hopper_query_fits_registers(dim, row_blocks);
  layout["block_m"] = Tile::kBlockM;
  layout["stages"] = plan.stages;
  layout["threads"] = Tile::kThreads;
  layout["dim_chunks"] = chunks;
  layout["smem_bytes"] = plan.total_bytes;
  layout["stage_bytes"] = plan.stage_bytes;
  layout["stat_offset"] = plan.stat_offset;
  layout["stat_box_rows"] = Tile::kStatBoxRows;
  layout["list_offset"] = plan.list_offset;
  layout["lists_fit"] = k > 1 && refmatch::hopper_lists_fit(dim, row_blocks, k, smem_limit);
  layout["smem_bytes_with_lists"] = refmatch::hopper_smem_layout(chunks, row_blocks, k).total_bytes;
  return layout;
}

int64_t plan_match_splits(int64_t num_rows, int64_t num_refs, int64_t resident_ctas, int64_t block_m,
                          int64_t block_n) {
  require_at_least("num_rows", num_rows, 0);
  require_at_least("num_refs", num_refs, 0);
  require_at_least("block_m", block_m, 1);
  require_at_least("block_n", block_n, 1);
  return refmatch::plan_match_splits(num_rows, num_refs, resident_ctas, block_m, block_n);
}

int64_t match_refs_per_split(int64_t num_refs, int64_t splits, int64_t block_m) {
  require_at_least("num_refs", num_refs, 0);
  require_at_least("splits", splits, 1);
  require_at_least("block_m", block_m, 1);
  return refmatch::match_refs_per_split(num_refs, splits, block_m);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "refmatch native module (torch-free): build info and kernel launchers";
  m.def("build_info", &build_info, "Version, compiler, CUDA runtime version and compiled archs.");
  m.def("cuda_device_count", &refmatch::cuda_device_count,
        "(count, error) from the CUDA runtime; error is empty on success.");
  m.def("merge_partial_bests", &merge_partial_bests, py::arg("scores"), py::arg("indices"),
        "Merge [S, N] partial bests with the shared tie rule (host check).");
  bind_epilogue_host(m);
  bind_cpu_passes(m);
  m.def("match_argmax", &match_argmax, py::arg("query"), py::arg("dtype"), py::arg("batch"),
        py::arg("dim"), py::arg("height"), py::arg("width"), py::arg("query_strides"),
        py::arg("reference"), py::arg("num_refs"), py::arg("reference_strides"), py::arg("ref_stat"),
        py::arg("metric"), py::arg("allow_tf32"), py::arg("out_score"), py::arg("out_index"),
        py::arg("splits"), py::arg("partial_score"), py::arg("partial_index"), py::arg("stream"),
        py::arg("device"), py::arg("hopper_rows") = 0, py::arg("split_starts") = 0, py::arg("k") = 1,
        py::arg("hopper_query_registers") = false, py::arg("hopper_tma_loads") = false, py::arg("ablate") = 0,
        py::arg("hopper_shared_lists") = false,
        "Fused match on raw device pointers, on the caller's stream; no sync. k = 1: writes oriented "
        "scores float32 [N] and indices int64 [N] (and per-split partials [splits, N] when splits > 1). "
        "k = 2..64: sorted top-k lists [splits, N, k] into out_score / out_index (partials unused). "
        "hopper_rows: query rows per CTA of the wgmma kernel (128, or 256 where it fits; 0: off), "
        "which runs where it can serve the call; hopper_query_registers: its query in registers (RS wgmma) "
        "where it fits (any D with 128 rows, D <= 64 with 256); hopper_tma_loads: its bank loaded through TMA "
        "where the call allows (16-byte aligned bank and ref_stat, M < 2^31); ablate (diagnostics, results "
        "meaningless): wgmma stages left out, 1 loads + 2 epilogue; hopper_shared_lists: its top-k lists in "
        "shared memory where they fit beside the pipeline, else in the outputs. split_starts: device int64 "
        "[splits + 1] bank ranges, or 0 for even splits. Errors: ValueError, RuntimeError (CUDA).");
  m.def("match_splits", &refmatch::match_splits, py::arg("num_rows"), py::arg("num_refs"),
        py::arg("dim"), py::arg("dtype"), py::arg("allow_tf32"), py::arg("device"), py::arg("reference"),
        py::arg("stride_m"), py::arg("stride_d"), py::arg("hopper_rows") = 0, py::arg("k") = 1,
        "Bank splits that fill the device for this problem, in the tiles its launch takes (the bank's "
        "address and strides in elements decide the kernel; host queries only).");
  m.def("match_kernel_name", &refmatch::match_kernel_name, py::arg("dim"), py::arg("dtype"),
        py::arg("allow_tf32"), py::arg("device"), py::arg("hopper_rows"), py::arg("hopper_query_registers"),
        py::arg("reference"), py::arg("stride_m"), py::arg("stride_d"), py::arg("num_refs"),
        py::arg("hopper_tma_loads") = false, py::arg("k") = 1,
        "Kernel a k-call runs: \"wgmma\" (128 query rows per CTA), \"wgmma-256\", each with \"-rs\" "
        "(query in registers) and \"-tma\" (TMA loads) as asked and possible, or \"mma.sync\".");
  m.def("hopper_tma_eligible", &refmatch::hopper_tma_eligible, py::arg("num_refs"), py::arg("dim"),
        py::arg("reference"), py::arg("stride_m"), py::arg("ref_stat"),
        "Whether the wgmma kernel can load this bank through TMA (host check of match_plan_sm90.h).");
  m.def("hopper_layout", &hopper_layout, py::arg("dim"), py::arg("dtype"), py::arg("ref_copy_bytes"),
        py::arg("smem_limit"), py::arg("rows") = 128, py::arg("k") = 1,
        "Tile constants, shared-memory plan and eligibility of the wgmma kernel asked for `rows` (128 or 256; "
        "the cuda backend asks 256 by default) query rows per CTA (block_n: the rows it runs); for a top-k "
        "call (k > 1) whether its lists fit in shared memory beside the pipeline (lists_fit), and its bytes "
        "with them.");
  m.def("hopper_tile_stages", [](int64_t dim_chunks, int64_t tiles) {
          const int stages = static_cast<int>(refmatch::hopper_smem_layout(dim_chunks).stages);
          refmatch::HopperTileStages walk;
          std::vector<std::pair<int, int>> seen;
          for (int64_t tile = 0; tile < tiles; ++tile, walk.next(static_cast<int>(dim_chunks), stages)) {
            seen.emplace_back(walk.first(stages), walk.parity(stages));
          }
          return seen;
        }, py::arg("dim_chunks"), py::arg("tiles"),
        "(first stage, barrier parity) of each of a consumer's first `tiles` tiles in the wgmma kernel's "
        "ring of stages, as its loop walks them (host check).");
  m.def("hopper_stat_lead", [](int64_t m0) { return refmatch::hopper_stat_lead(m0); }, py::arg("m0"),
        "Rows between a tile's TMA box of metric terms (16-byte aligned) and its first row m0 (host check).");
  m.def("swizzle128_offset", &refmatch::swizzle128_offset, py::arg("row"), py::arg("unit"),
        "Byte offset of a 16-byte unit of a chunk row in the wgmma 128B swizzle (host check).");
  m.def("query_fragment_offset", &refmatch::query_fragment_offset, py::arg("first_row"), py::arg("lane"),
        py::arg("k"), "Byte offset of the row a lane gives ldmatrix.x4 for the RS wgmma's A fragment (host check).");
  m.def("match_layout", &match_layout, py::arg("dim"), py::arg("element_bytes"),
        py::arg("smem_limit"), "Tile constants and shared-memory plan of the match kernel.");
  m.def("reference_copy_bytes", &refmatch::reference_copy_bytes, py::arg("address"),
        py::arg("stride_m"), py::arg("stride_d"), py::arg("element_bytes"),
        "cp.async width for reference rows (16, 8, 4) or 0 for element loads.");
  m.def("plan_match_splits", &plan_match_splits, py::arg("num_rows"), py::arg("num_refs"),
        py::arg("resident_ctas"), py::arg("block_m") = refmatch::MatchTile::kBlockM,
        py::arg("block_n") = refmatch::MatchTile::kBlockN,
        "Split count for N rows, M references and resident CTA slots (tiles of block_n x block_m).");
  m.def("match_refs_per_split", &match_refs_per_split, py::arg("num_refs"),
        py::arg("splits"), py::arg("block_m") = refmatch::MatchTile::kBlockM,
        "References per split (whole tiles of block_m rows).");
}
