// refmatch._C.stream_tiles: the CUDA kernels' per-tile epilogues (match_epilogue.cuh),
// compiled for the host and run on one emulated warp (host_warp.h), so the CPU tests
// check the device code itself: its tiling, quad shuffles, tie rule, NaN and padding.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "refmatch/host_warp.h"
#include "refmatch/match_cuda.h"
#include "refmatch/match_epilogue.cuh"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

using refmatch::Best;
using refmatch::HostWarp;

struct Stream {
  const float* scores;  // [rows, cols]: the tile products q.r, as the MMAs leave them
  int64_t rows, cols;
  const float* stats;   // [cols rounded up to whole tiles]: 1/|r| or |r|^2, zeros past cols
  int metric, k;
  float* out_score;     // [rows, k]
  int64_t* out_index;
};

// One warp's rows [first, first + 16 kM) in the kernel's numbering (atom i holds rows
// kAtomRows i .. + 15), streamed through every tile of 8 kN columns as the kernel does.
template <int kAtomRows, int kM, int kN>
void stream_warp(const Stream& s, int64_t first) {
  constexpr int kRows = 16 * kM, kCols = 8 * kN, kSpan = kAtomRows * (kM - 1) + 16;
  const int64_t rows = std::min<int64_t>(kRows, s.rows - first);
  auto kernel_row = [](int64_t row) { return kAtomRows * (row / 16) + row % 16; };
  const int64_t num_rows = kernel_row(rows - 1) + 1;  // the rows past it are padding, as in the kernel
  std::vector<float> list_scores(kSpan * s.k);
  std::vector<int64_t> list_indices(kSpan * s.k);
  // The lists leave as the wgmma kernel's shared lists do (copy_topk_lists), to rows kShift
  // further on: here into a buffer of kernel-numbered rows, read out below.
  constexpr int64_t kShift = 3;
  std::vector<float> copied_scores((kSpan + kShift) * s.k, NAN);
  std::vector<int64_t> copied_indices((kSpan + kShift) * s.k, -2);
  HostWarp::run([&](int lane) {
    Best best[kM][2];
    for (auto& pair : best) pair[0] = pair[1] = refmatch::empty_best();
    if (s.k > 1) {
      refmatch::detail::init_topk_lists<kAtomRows, kM, HostWarp>(list_scores.data(), list_indices.data(), lane / 4,
                                                                   num_rows, s.k, lane);
    }
    float acc[kM][kN][4];
    for (int64_t m0 = 0; m0 < s.cols; m0 += kCols) {
      for (int i = 0; i < kM; ++i)
        for (int j = 0; j < kN; ++j)
          for (int e = 0; e < 4; ++e) {
            const int64_t row = 16 * i + lane / 4 + 8 * (e / 2), col = m0 + 8 * j + 2 * (lane % 4) + e % 2;
            // Padding rows and columns hold +inf, which must never surface.
            acc[i][j][e] = row < rows && col < s.cols ? s.scores[(first + row) * s.cols + col] : INFINITY;
          }
      if (s.k == 1) {
        refmatch::detail::fold_tile<kM, kN, HostWarp>(acc, best, s.stats + m0, s.metric, m0, s.cols, lane);
      } else {
        refmatch::detail::fold_tile_topk<kAtomRows, kM, kN, HostWarp>(
            acc, best, s.stats + m0, s.metric, m0, s.cols, lane, list_scores.data(), list_indices.data(), lane / 4,
            num_rows, s.k);
      }
    }
    if (s.k > 1) {
      refmatch::detail::copy_topk_lists<kAtomRows, kM, HostWarp>(list_scores.data(), list_indices.data(),
                                                                 copied_scores.data(), copied_indices.data(),
                                                                 lane / 4, kShift, num_rows, s.k, lane);
    }
    if (s.k == 1 && lane % 4 == 0) {
      for (int i = 0; i < kM; ++i)
        for (int h = 0; h < 2; ++h) {
          const int64_t row = 16 * i + lane / 4 + 8 * h;
          if (row < rows) {
            s.out_score[first + row] = best[i][h].score;
            s.out_index[first + row] = best[i][h].index;
          }
        }
    }
  });
  for (int64_t row = 0; s.k > 1 && row < rows; ++row) {
    std::copy_n(&copied_scores[(kernel_row(row) + kShift) * s.k], s.k, s.out_score + (first + row) * s.k);
    std::copy_n(&copied_indices[(kernel_row(row) + kShift) * s.k], s.k, s.out_index + (first + row) * s.k);
  }
}

template <int kAtomRows, int kM, int kN>
void stream_all(const Stream& s) {
  for (int64_t first = 0; first < s.rows; first += 16 * kM) stream_warp<kAtomRows, kM, kN>(s, first);
}

// The per-row best (k = 1) or sorted top-k lists [rows, k] of a score matrix, through the
// epilogue of `layout`: "mma.sync" (a warp's 32 rows x 64-column tiles), "wgmma" (64-row
// blocks x 128 columns, one per warp of 16 rows) or "wgmma-256" (two such blocks).
std::pair<FloatArray, IndexArray> stream_tiles(FloatArray scores, const std::string& layout, int k, int metric,
                                               std::optional<FloatArray> stats) {
  // The kernels' warp shapes: kAtomRows, kM, kN of match_kernel.cuh and match_kernel_sm90.cuh.
  const auto run = layout == "mma.sync" ? stream_all<16, 2, 8> : layout == "wgmma" ? stream_all<64, 1, 16>
                   : layout == "wgmma-256" ? stream_all<64, 2, 16> : nullptr;
  if (run == nullptr) throw py::value_error("layout must be 'mma.sync', 'wgmma' or 'wgmma-256', got '" + layout + "'");
  if (scores.ndim() != 2) throw py::value_error("scores must be [rows, cols]");
  if (k < 1 || k > refmatch::kMaxTopK) throw py::value_error("k must be in [1, 64]");
  if (metric < 0 || metric > 2) throw py::value_error("metric must be 0 (dot), 1 (cosine) or 2 (l2)");
  const int64_t rows = scores.shape(0), cols = scores.shape(1);
  if (metric != 0 && (!stats || stats->ndim() != 1 || stats->shape(0) != cols)) {
    throw py::value_error("cosine and l2 need stats [cols]: 1/|r| or |r|^2");
  }
  std::vector<float> padded(cols + 128, 0.f);  // whole tiles of terms, as the kernels' stages hold them
  if (stats) std::copy_n(stats->data(), cols, padded.begin());
  FloatArray out_score({rows, int64_t{k}});
  IndexArray out_index({rows, int64_t{k}});
  const Stream s{scores.data(), rows, cols, padded.data(), metric, k, out_score.mutable_data(),
                 out_index.mutable_data()};
  py::gil_scoped_release released;
  run(s);
  return {out_score, out_index};
}

}  // namespace

void bind_epilogue_host(py::module_& m) {
  m.def("stream_tiles", &stream_tiles, py::arg("scores"), py::arg("layout") = "mma.sync", py::arg("k") = 1,
        py::arg("metric") = 0, py::arg("stats") = py::none(),
        "The CUDA kernels' per-tile epilogue, run on the host by one emulated warp: per-row best (k = 1) or "
        "sorted top-k [rows, k] of float32 products [rows, cols] (metric 0 dot, 1 cosine: times stats, 2 l2: "
        "2 x - stats), tiled as `layout` ('mma.sync', 'wgmma', 'wgmma-256') tiles them (host check).");
}
