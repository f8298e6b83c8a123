// Fused similarity top-k on the CPU (k >= 1, float32): the torch backend's
// walk (refmatch/backends/cpu_topk.py) without its score tile. CMake compiles this
// file twice: REFMATCH_CPU_ISA=1 with AVX-512 flags, 2 with AVX2 + FMA flags.
// Everything here has internal linkage and uses no standard-library template, so
// nothing compiled with these flags can stand in for code other CPUs run.
//
// Algorithm
//   score(q, r) = alpha * (q . r) + bias[r], the larger wins. Each query row keeps
//   a sorted list of its k best (score, index) in the caller's state arrays, and
//   its k-th score as a threshold in a vector register. A step's scores arrive
//   in ascending index order (vector by vector, lane by lane); one compare per
//   vector against the threshold, and only lanes above it are inserted, lowest
//   lane first. So a score equal to the k-th never enters (its index is higher:
//   ties go to the lowest index) and NaN, false in every compare, never does.
//   After the first few steps a vector almost never holds such a lane.
//
// Tiling
//   References come in 512-row sub-blocks packed as [steps][D][width] (zeros,
//   and bias -inf, past the block's end). kRows query rows (copied, zero-padded)
//   times one step of `width` = kLanes * kPanels references accumulate in
//   kRows * kPanels vector registers over D by FMAs. Scores never leave
//   registers: behind the walk, the GEMM writes and rereads every score, which
//   at D = 24 took as long as the GEMM itself. Shapes, measured on a Zen 5 core
//   pair (bench/bench_cpu_topk.py): AVX-512 6 rows x 2 vectors of 16 lanes;
//   AVX2 4 rows x 2 vectors of 8 (its 16 registers).
//
// Limits: float32; any k, though the caller stops at 1024, where the GEMM walk catches
// up (each entering score moves part of the list); rows are split over threads by the
// caller (each call owns rows [begin, end)); state lists initialised by the caller to
// -inf and index -1.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "refmatch/cpu_topk.h"

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

// Per vector width: the tile shape, the vector type, and the lanes of `score` above
// `threshold` as bits, lane 0 lowest.
#if REFMATCH_CPU_ISA == 1
constexpr int kLanes = 16, kRows = 6, kPanels = 2;
typedef float Floats __attribute__((vector_size(64)));
uint32_t lanes_above(Floats score, Floats threshold) {
  return _mm512_cmp_ps_mask((__m512)score, (__m512)threshold, _CMP_GT_OQ);
}
#elif REFMATCH_CPU_ISA == 2
constexpr int kLanes = 8, kRows = 4, kPanels = 2;
typedef float Floats __attribute__((vector_size(32)));
uint32_t lanes_above(Floats score, Floats threshold) {
  return static_cast<uint32_t>(_mm256_movemask_ps(
      _mm256_cmp_ps((__m256)score, (__m256)threshold, _CMP_GT_OQ)));
}
#else
#error "REFMATCH_CPU_ISA must be 1 (AVX-512) or 2 (AVX2)"
#endif
constexpr int kWidth = kLanes * kPanels;
static_assert(kSubBlock % kWidth == 0, "whole steps per sub-block");

// Inserts (score, index) into a row's sorted list of k, above its k-th score; returns the new k-th.
// The slot: a binary search for the first score below it (equal scores stay ahead: lower
// indices), then one move of the tail, so long lists (k in the hundreds) stay cheap.
float insert(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  int64_t slot = 0, last = k - 1;  // scores[k - 1] < score: the slot is in [slot, last]
  while (slot < last) {
    const int64_t middle = (slot + last) / 2;
    if (scores[middle] < score) {
      last = middle;
    } else {
      slot = middle + 1;
    }
  }
  std::memmove(scores + slot + 1, scores + slot, (k - 1 - slot) * sizeof(float));
  std::memmove(indices + slot + 1, indices + slot, (k - 1 - slot) * sizeof(int32_t));
  scores[slot] = score;
  indices[slot] = index;
  return scores[k - 1];
}

void topk_rows(const TopkBlock& b, int64_t row_begin, int64_t row_end) {
  const int64_t dim = b.dim, k = b.k;
  Floats32 packed(kSubBlock * dim), bias(kSubBlock), query(kRows * dim);
  for (int64_t m0 = 0; m0 < b.refs; m0 += kSubBlock) {
    const int64_t count = smaller(kSubBlock, b.refs - m0), steps = (count + kWidth - 1) / kWidth;
    for (int64_t j = 0; j < steps * kWidth; ++j) {
      const bool real = j < count;
      bias.data[j] = real ? (b.bias ? b.bias[m0 + j] : 0.f) : -INFINITY;
      float* column = packed.data + (j / kWidth) * dim * kWidth + j % kWidth;
      for (int64_t c = 0; c < dim; ++c) column[c * kWidth] = real ? b.reference[(m0 + j) * dim + c] : 0.f;
    }
    for (int64_t r0 = row_begin; r0 < row_end; r0 += kRows) {
      const int rows = static_cast<int>(smaller(kRows, row_end - r0));
      for (int r = 0; r < kRows; ++r)
        for (int64_t c = 0; c < dim; ++c) query.data[r * dim + c] = r < rows ? b.query[(r0 + r) * dim + c] : 0.f;
      Floats threshold[kRows];
      for (int r = 0; r < kRows; ++r) {  // padding rows: +inf, nothing enters
        const float kth = r < rows ? b.state_score[(r0 + r) * k + k - 1] : INFINITY;
        threshold[r] = Floats{} + kth;
      }
      for (int64_t step = 0; step < steps; ++step) {
        Floats acc[kRows][kPanels] = {};
        const float* panel = packed.data + step * dim * kWidth;
        for (int64_t c = 0; c < dim; ++c) {
          Floats ref[kPanels];
          for (int p = 0; p < kPanels; ++p) std::memcpy(&ref[p], panel + c * kWidth + p * kLanes, sizeof(Floats));
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const float q = query.data[r * dim + c];
#pragma GCC unroll 4
            for (int p = 0; p < kPanels; ++p) acc[r][p] += q * ref[p];
          }
        }
#pragma GCC unroll 4
        for (int p = 0; p < kPanels; ++p) {
          Floats column_bias;
          std::memcpy(&column_bias, bias.data + step * kWidth + p * kLanes, sizeof(Floats));
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const Floats score = acc[r][p] * b.alpha + column_bias;
            uint32_t above = lanes_above(score, threshold[r]);
            if (__builtin_expect(above == 0, 1)) continue;
            float* scores = b.state_score + (r0 + r) * k;
            int32_t* indices = b.state_index + (r0 + r) * k;
            float kth = threshold[r][0];
            for (; above; above &= above - 1) {
              const int lane = __builtin_ctz(above);
              if (score[lane] > kth) {  // the k-th may have risen within this vector
                kth = insert(scores, indices, k, score[lane],
                             static_cast<int32_t>(b.first_index + m0 + step * kWidth + p * kLanes + lane));
              }
            }
            threshold[r] = Floats{} + kth;
          }
        }
      }
    }
  }
}

}  // namespace

#if REFMATCH_CPU_ISA == 1
void cpu_topk_rows_avx512(const TopkBlock& block, int64_t begin, int64_t end) { topk_rows(block, begin, end); }
#else
void cpu_topk_rows_avx2(const TopkBlock& block, int64_t begin, int64_t end) { topk_rows(block, begin, end); }
#endif

}  // namespace refmatch
