// refmatch._C's CPU passes, run without the GIL from raw host pointers that the Python layer
// checked: the bfloat16 screen's tile pass (screen_tile.h) and the fused top-k (cpu_topk.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "refmatch/cpu_topk.h"
#include "refmatch/screen_tile.h"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

// The CPU bfloat16 screen's candidates of one tile (screen_tile.h), from raw host pointers;
// the pass runs without the GIL.
std::tuple<IndexArray, IndexArray, FloatArray, int64_t> screen_tile_candidates(
    uintptr_t tile, int64_t rows, int64_t width, int k, uintptr_t top, uintptr_t bound, uintptr_t window) {
  if (rows < 0 || width < 1 || k < 1 || k > 64) {
    throw py::value_error("screen_tile_candidates: rows >= 0, width >= 1 and 1 <= k <= 64");
  }
  refmatch::TileCandidates found;
  {
    py::gil_scoped_release released;
    refmatch::screen_tile(reinterpret_cast<const uint16_t*>(tile), rows, width, k, reinterpret_cast<float*>(top),
                          reinterpret_cast<float*>(bound), reinterpret_cast<const float*>(window), found);
  }
  const auto count = static_cast<py::ssize_t>(found.rows.size());
  return {IndexArray(count, found.rows.data()), IndexArray(count, found.cols.data()),
          FloatArray(count, found.scores.data()), found.near_rows};
}

// The CPU fused top-k's vector widths that this module holds and this CPU (and its OS) runs,
// widest first: "avx512", "avx2".
std::vector<std::string> cpu_topk_isas() {
  std::vector<std::string> isas;
#ifdef REFMATCH_CPU_TOPK
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    isas.emplace_back("avx512");
  }
  if (avx2) isas.emplace_back("avx2");
#endif
  return isas;
}

// Rows [begin, end) of the CPU fused top-k over one reference block (cpu_topk.h), from raw
// host pointers; runs without the GIL, so threads can share the rows.
void cpu_topk_rows(const std::string& isa, uintptr_t query, int64_t rows, int64_t dim, uintptr_t reference,
                   int64_t refs, uintptr_t bias, float alpha, int64_t first_index, int64_t k, uintptr_t state_score,
                   uintptr_t state_index, int64_t begin, int64_t end) {
  if (rows < 0 || dim < 1 || refs < 0 || first_index < 0 || refs > INT32_MAX - first_index || k < 1 ||
      begin < 0 || end > rows || begin > end) {
    throw py::value_error("cpu_topk_rows: needs dim >= 1, k >= 1, 0 <= begin <= end <= rows, references "
                          "below 2^31");
  }
  bool known = false;
  for (const auto& held : cpu_topk_isas()) known = known || held == isa;
  if (!known) throw py::value_error("cpu_topk_rows: isa must be one of cpu_topk_isas() on this CPU, got '" + isa + "'");
#ifdef REFMATCH_CPU_TOPK
  const refmatch::TopkBlock block{reinterpret_cast<const float*>(query), rows, dim,
                                  reinterpret_cast<const float*>(reference), refs,
                                  reinterpret_cast<const float*>(bias), alpha, first_index, k,
                                  reinterpret_cast<float*>(state_score), reinterpret_cast<int32_t*>(state_index)};
  py::gil_scoped_release released;
  (isa == "avx512" ? refmatch::cpu_topk_rows_avx512 : refmatch::cpu_topk_rows_avx2)(block, begin, end);
#endif
}

}  // namespace

void bind_cpu_passes(py::module_& m) {
  m.def("screen_tile_candidates", &screen_tile_candidates, py::arg("tile"), py::arg("rows"), py::arg("width"),
        py::arg("k"), py::arg("top"), py::arg("bound"), py::arg("window"),
        "CPU bfloat16 screen, one tile [rows, width] (bfloat16 bits): raises the rows' k-th bounds (float32 "
        "[rows], and top k: their kept scores [rows, k]) and returns the candidates at or above each row's "
        "floor, bound - window (float32 [rows]): (rows int64, cols int64, scores float32, rows near).");
  m.def("cpu_topk_isas", &cpu_topk_isas,
        "Vector widths of the CPU fused top-k that this build holds and this CPU runs, widest first.");
  m.def("cpu_topk_rows", &cpu_topk_rows, py::arg("isa"), py::arg("query"), py::arg("rows"), py::arg("dim"),
        py::arg("reference"), py::arg("refs"), py::arg("bias"), py::arg("alpha"), py::arg("first_index"),
        py::arg("k"), py::arg("state_score"), py::arg("state_index"), py::arg("begin"), py::arg("end"),
        "CPU fused top-k (float32) of query rows [begin, end) of [rows, dim] against a block of references "
        "[refs, dim] (contiguous, indices from first_index): score = alpha * q.r + bias (float32 [refs], or 0 for "
        "none), merged into the sorted lists state_score float32 / state_index int32 [rows, k]; no GIL held.");
}
