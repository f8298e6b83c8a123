// Fused similarity argmax on the CPU (k = 1, float32): the torch backend's walk
// (refmatch/backends/cpu_argmax.py) without its score tile. CMake compiles this
// file twice: REFMATCH_CPU_ISA=1 with AVX-512 flags, 2 with AVX2 + FMA flags.
// Everything here has internal linkage and uses no standard-library template, so
// nothing compiled with these flags can stand in for code other CPUs run.
//
// Algorithm
//   score(q, r) = alpha * (q . r) + bias[r], the larger wins. Per query row the
//   running best is kept per vector lane: `width` = kLanes * kPanels lanes, lane
//   l seeing references l, l + width, ... in ascending order, so a strict '>'
//   keeps the lowest index of a tie and NaN (false in every compare) never wins.
//   The caller folds the lanes at the end: the lowest index among the lanes
//   holding the row's maximum, the tie rule of every other backend.
//
// Tiling
//   References come in 512-row sub-blocks packed as [steps][D][width] (zeros,
//   and bias -inf, past the block's end). kRows query rows (copied, zero-padded)
//   times one step of `width` references accumulate in kRows * kPanels vector
//   registers over D by FMAs; the epilogue is one compare and two blends per
//   vector. Scores never leave registers: behind the walk, the GEMM writes and
//   rereads every score, which at D = 24 took as long as the GEMM itself.
//   Shapes, measured on a Zen 5 core pair (bench/bench_cpu_argmax.py): AVX-512 6 rows
//   x 2 vectors of 16 lanes; AVX2 4 rows x 2 vectors of 8 (its 16 registers).
//
// Limits: float32; rows are split over threads by the caller (each call owns rows
// [begin, end)); state arrays initialised by the caller to -inf and index -1.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "refmatch/cpu_argmax.h"

namespace refmatch {
namespace {

constexpr int64_t kSubBlock = 512;

int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

struct Floats32 {  // a heap buffer without std::vector (see the note at the top)
  explicit Floats32(int64_t count) : data(new float[count]) {}
  ~Floats32() { delete[] data; }
  Floats32(const Floats32&) = delete;
  Floats32& operator=(const Floats32&) = delete;
  float* data;
};

// Vector types per lane count (GCC drops vector_size on a type that depends on a template parameter).
template <int kLanes>
struct LaneVectors;
template <>
struct LaneVectors<16> {
  typedef float Floats __attribute__((vector_size(64)));
  typedef int32_t Ints __attribute__((vector_size(64)));
};
template <>
struct LaneVectors<8> {
  typedef float Floats __attribute__((vector_size(32)));
  typedef int32_t Ints __attribute__((vector_size(32)));
};

template <int kLanes, int kRows, int kPanels>
void argmax_rows(const ArgmaxBlock& b, int64_t row_begin, int64_t row_end) {
  using Floats = typename LaneVectors<kLanes>::Floats;
  using Ints = typename LaneVectors<kLanes>::Ints;
  constexpr int kWidth = kLanes * kPanels;
  static_assert(kSubBlock % kWidth == 0, "whole steps per sub-block");
  const int64_t dim = b.dim;
  Floats32 packed(kSubBlock * dim), bias(kSubBlock), query(kRows * dim);
  for (int64_t m0 = 0; m0 < b.refs; m0 += kSubBlock) {
    const int64_t count = smaller(kSubBlock, b.refs - m0), steps = (count + kWidth - 1) / kWidth;
    for (int64_t j = 0; j < steps * kWidth; ++j) {
      const bool real = j < count;
      bias.data[j] = real ? (b.bias ? b.bias[m0 + j] : 0.f) : -INFINITY;
      float* column = packed.data + (j / kWidth) * dim * kWidth + j % kWidth;
      for (int64_t k = 0; k < dim; ++k) column[k * kWidth] = real ? b.reference[(m0 + j) * dim + k] : 0.f;
    }
    for (int64_t r0 = row_begin; r0 < row_end; r0 += kRows) {
      const int rows = static_cast<int>(smaller(kRows, row_end - r0));
      for (int r = 0; r < kRows; ++r)
        for (int64_t k = 0; k < dim; ++k) query.data[r * dim + k] = r < rows ? b.query[(r0 + r) * dim + k] : 0.f;
      Floats best[kRows][kPanels];
      Ints best_index[kRows][kPanels];
      for (int r = 0; r < kRows; ++r)  // padding rows start from the last real row's state, never stored
        for (int p = 0; p < kPanels; ++p) {
          const int64_t row = r0 + (r < rows ? r : rows - 1);
          std::memcpy(&best[r][p], b.state_score + row * kWidth + p * kLanes, sizeof(Floats));
          std::memcpy(&best_index[r][p], b.state_index + row * kWidth + p * kLanes, sizeof(Ints));
        }
      for (int64_t step = 0; step < steps; ++step) {
        Floats acc[kRows][kPanels] = {};
        const float* panel = packed.data + step * dim * kWidth;
        for (int64_t k = 0; k < dim; ++k) {
          Floats ref[kPanels];
          for (int p = 0; p < kPanels; ++p) std::memcpy(&ref[p], panel + k * kWidth + p * kLanes, sizeof(Floats));
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const float q = query.data[r * dim + k];
#pragma GCC unroll 4
            for (int p = 0; p < kPanels; ++p) acc[r][p] += q * ref[p];
          }
        }
#pragma GCC unroll 4
        for (int p = 0; p < kPanels; ++p) {
          Floats column_bias;
          std::memcpy(&column_bias, bias.data + step * kWidth + p * kLanes, sizeof(Floats));
          Ints index;
          for (int l = 0; l < kLanes; ++l) {
            index[l] = static_cast<int32_t>(b.first_index + m0 + step * kWidth + p * kLanes + l);
          }
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const Floats score = acc[r][p] * b.alpha + column_bias;
            const Ints better = score > best[r][p];
            best[r][p] = better ? score : best[r][p];
            best_index[r][p] = better ? index : best_index[r][p];
          }
        }
      }
      for (int r = 0; r < rows; ++r)
        for (int p = 0; p < kPanels; ++p) {
          std::memcpy(b.state_score + (r0 + r) * kWidth + p * kLanes, &best[r][p], sizeof(Floats));
          std::memcpy(b.state_index + (r0 + r) * kWidth + p * kLanes, &best_index[r][p], sizeof(Ints));
        }
    }
  }
}

}  // namespace

#if REFMATCH_CPU_ISA == 1
int cpu_argmax_width_avx512() { return 16 * 2; }
void cpu_argmax_rows_avx512(const ArgmaxBlock& block, int64_t begin, int64_t end) {
  argmax_rows<16, 6, 2>(block, begin, end);
}
#elif REFMATCH_CPU_ISA == 2
int cpu_argmax_width_avx2() { return 8 * 2; }
void cpu_argmax_rows_avx2(const ArgmaxBlock& block, int64_t begin, int64_t end) {
  argmax_rows<8, 4, 2>(block, begin, end);
}
#else
#error "REFMATCH_CPU_ISA must be 1 (AVX-512) or 2 (AVX2)"
#endif

}  // namespace refmatch
