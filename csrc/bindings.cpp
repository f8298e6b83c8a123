// pybind11 module refmatch._C. Torch-free by design: it never includes or
// links libtorch, so one binary serves every torch version and builds on
// machines whose torch has no CUDA.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>

#include "refmatch/best.h"
#include "refmatch/cuda_runtime_status.h"

namespace py = pybind11;
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

// Host check of the per-tile epilogue: streams a score matrix [N, M] through
// tiles of `tile_cols` columns, keeping a running best per row.
std::pair<FloatArray, IndexArray> stream_tiles(FloatArray scores, int64_t tile_cols) {
  if (scores.ndim() != 2) throw py::value_error("scores must be [rows, cols]");
  if (tile_cols < 1) throw py::value_error("tile_cols must be >= 1");
  const int64_t rows = scores.shape(0), cols = scores.shape(1);
  FloatArray out_scores(rows);
  IndexArray out_indices(rows);
  auto os = out_scores.mutable_unchecked<1>();
  auto oi = out_indices.mutable_unchecked<1>();
  for (int64_t r = 0; r < rows; ++r) {
    refmatch::Best best = refmatch::empty_best();
    for (int64_t c0 = 0; c0 < cols; c0 += tile_cols) {
      const int64_t width = cols - c0 < tile_cols ? cols - c0 : tile_cols;
      best = refmatch::offer_tile_row(best, scores.data(r, c0), width, c0);
    }
    os(r) = best.score;
    oi(r) = best.index;
  }
  return {out_scores, out_indices};
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "refmatch native module (torch-free): build info and kernel launchers";
  m.def("build_info", &build_info, "Version, compiler, CUDA runtime version and compiled archs.");
  m.def("cuda_device_count", &refmatch::cuda_device_count,
        "(count, error) from the CUDA runtime; error is empty on success.");
  m.def("merge_partial_bests", &merge_partial_bests, py::arg("scores"), py::arg("indices"),
        "Merge [S, N] partial bests with the shared tie rule (host check).");
  m.def("stream_tiles", &stream_tiles, py::arg("scores"), py::arg("tile_cols"),
        "Running best over column tiles of a [N, M] score matrix (host check).");
}
