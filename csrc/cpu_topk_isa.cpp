// Fused similarity top-k on the CPU (k >= 1, float32): the torch backend's walk
// (refmatch/backends/cpu_topk.py) without its score tile. CMake compiles this file with
// REFMATCH_CPU_ISA=1 (AVX-512), 2 (AVX2 + FMA) and 3 (AVX-512 and AVX512_BF16: the screen).
// All of it has internal linkage and no standard-library template, so nothing compiled
// with these flags can stand in for code other CPUs run.
//
// Algorithm
//   score(q, r) = alpha * (q . r) + bias[r], the larger wins. Each query row keeps
//   a sorted list of its k best (score, index) in the caller's state arrays, and
//   its k-th score as a threshold in a vector register. A step's scores arrive
//   in ascending index order (vector by vector, lane by lane); one compare per
//   vector against the threshold, and only lanes above it are inserted, lowest
//   lane first. So a score equal to the k-th never enters (its index is higher: ties go
//   to the lowest index) nor does NaN; after the first steps few vectors hold such a lane.
//
// Screen (ISA 3, where the caller gives each row a window E >= |screened - score|)
//   A step is first scored from bfloat16 copies of both sides (vdpbf16ps: twice the
//   float32 FMA rate). A vector none of whose screened scores beats the k-th minus E
//   cannot hold an entering score; the others are scored again in float32 by the
//   very operations of the walk and offered as above, so results are the walk's to
//   the bit: the whole step where kWholeStepVectors or more need it, else queued and
//   scored 8 at a time, side by side (a vector alone waits on its FMA chain's latency;
//   top-8 at 8192 x 16384 x 64: 76 -> 70 ms). A row tile whose float32 vectors enter
//   nothing more than kCrowdedVectors times in a sub-block (clustered features) walks from then on,
//   as does one with a row E does not bound (not finite).
//
// Tiling
//   References come in 512-row sub-blocks packed as [steps][D][width] (zeros, and bias
//   -inf, past the block's end), for the screen also as bfloat16 channel pairs [steps]
//   [D / 2][width]. kRows query rows times one step of `width` = kLanes * kPanels
//   references accumulate in kRows * kPanels vector registers over D. Scores never leave
//   registers: behind the walk, the GEMM writes and rereads every score, which at D = 24
//   took as long as the GEMM itself. Shapes, measured on a Zen 5 core pair
//   (bench/bench_cpu_topk.py): AVX-512 6 rows x 2 vectors of 16; AVX2 4 rows x 2 of 8.
//
// Limits: float32; any k, though the caller stops at 1024, where the GEMM walk catches up
// (each entering score moves part of the list); rows split over threads by the caller
// (each call owns rows [begin, end)); state lists initialised to -inf and index -1.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>

#include "refmatch/cpu_topk.h"

#include "cpu_topk_vectors.h"

namespace refmatch {
namespace {

constexpr int64_t kSubBlock = 512;
// Float32 vectors of a row tile that enter nothing, per sub-block, above which its screen
// costs more than it saves (a vector rescored outside a whole step loads its own operands).
constexpr int64_t kCrowdedVectors = 32;
constexpr int kWholeStepVectors = 6;  // vectors of a screened step from which it is scored whole in float32

int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T>
struct Buffer {  // a heap buffer without std::vector (see the note at the top)
  explicit Buffer(int64_t count) : data(new T[count > 0 ? count : 1]) {}
  ~Buffer() { delete[] data; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data;
};

constexpr bool kScreen = REFMATCH_CPU_ISA == 3;
static_assert(kSubBlock % kWidth == 0, "whole steps per sub-block");
static_assert(kRows * kPanels <= 32, "a step's vectors as bits of one word");

#if REFMATCH_CPU_ISA == 3
// A row of D floats as (D + 1) / 2 words of two bfloat16 channels, the first low, converted as
// vdpbf16ps reads them (nearest even, subnormals to zero; an odd D's last word padded with 0).
void bf16_pairs(const float* row, int64_t dim, uint32_t* pairs) {
  const int64_t count = (dim + 1) / 2;
  for (int64_t c = 0; c < dim; c += 16) {
    const __mmask16 lanes = dim - c >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (dim - c)) - 1);
    const __m256bh half = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lanes, row + c));
    uint32_t words[8];
    std::memcpy(words, &half, sizeof(words));
    for (int64_t w = 0; w < 8 && c / 2 + w < count; ++w) pairs[c / 2 + w] = words[w];
  }
}

// A step's screened dot products, query pairs [kRows][pairs] against panel pairs [pairs][kWidth].
void screened_dots(const uint32_t* query_pairs, const uint32_t* step_pairs, int64_t pairs,
                   Floats acc[kRows][kPanels]) {
  __m512 sums[kRows][kPanels];
  for (int r = 0; r < kRows; ++r)
    for (int p = 0; p < kPanels; ++p) sums[r][p] = _mm512_setzero_ps();
  for (int64_t c = 0; c < pairs; ++c) {
    __m512bh ref[kPanels];
    for (int p = 0; p < kPanels; ++p) ref[p] = (__m512bh)_mm512_loadu_si512(step_pairs + c * kWidth + p * kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      const __m512bh q = (__m512bh)_mm512_set1_epi32(static_cast<int>(query_pairs[r * pairs + c]));
#pragma GCC unroll 4
      for (int p = 0; p < kPanels; ++p) sums[r][p] = _mm512_dpbf16_ps(sums[r][p], q, ref[p]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int p = 0; p < kPanels; ++p) acc[r][p] = (Floats)sums[r][p];
}
#endif

TopkCounts topk_rows(const TopkBlock& b, int64_t row_begin, int64_t row_end) {
  const int64_t dim = b.dim, k = b.k, pairs = (dim + 1) / 2;
  const bool screen = kScreen && b.window != nullptr;
  Buffer<float> packed(kSubBlock * dim), bias(kSubBlock), last_tile(kRows * dim);
  // Per row tile: whether it walks (no screen, a row without a finite window, or crowded).
  const int64_t tiles = (row_end - row_begin + kRows - 1) / kRows;
  Buffer<bool> walks(tiles);
  // The screen's bfloat16 operands: a sub-block's, and every row's (padding rows 0), converted once.
  Buffer<uint32_t> packed_pairs(screen ? kSubBlock * pairs : 0), row_pairs(screen ? pairs : 0),
      query_pairs(screen ? tiles * kRows * pairs : 0);
#if REFMATCH_CPU_ISA == 3
  for (int64_t row = 0; screen && row < tiles * kRows; ++row) {
    if (row_begin + row < row_end) {
      bf16_pairs(b.query + (row_begin + row) * dim, dim, query_pairs.data + row * pairs);
    } else {
      std::memset(query_pairs.data + row * pairs, 0, pairs * sizeof(uint32_t));
    }
  }
#endif
  for (int64_t t = 0; t < tiles; ++t) {
    walks.data[t] = !screen;
    for (int64_t row = row_begin + t * kRows; screen && row < smaller(row_end, row_begin + (t + 1) * kRows); ++row)
      walks.data[t] = walks.data[t] || !std::isfinite(b.window[row]);
  }
  TopkCounts counts{0, 0};
  for (int64_t m0 = 0; m0 < b.refs; m0 += kSubBlock) {
    const int64_t count = smaller(kSubBlock, b.refs - m0), steps = (count + kWidth - 1) / kWidth;
    for (int64_t j = 0; j < steps * kWidth; ++j) {
      const bool real = j < count;
      bias.data[j] = real ? (b.bias ? b.bias[m0 + j] : 0.f) : -INFINITY;
      float* column = packed.data + (j / kWidth) * dim * kWidth + j % kWidth;
      for (int64_t c = 0; c < dim; ++c) column[c * kWidth] = real ? b.reference[(m0 + j) * dim + c] : 0.f;
    }
#if REFMATCH_CPU_ISA == 3
    for (int64_t j = 0; screen && j < steps * kWidth; ++j) {
      uint32_t* column = packed_pairs.data + (j / kWidth) * pairs * kWidth + j % kWidth;
      if (j < count) bf16_pairs(b.reference + (m0 + j) * dim, dim, row_pairs.data);
      for (int64_t c = 0; c < pairs; ++c) column[c * kWidth] = j < count ? row_pairs.data[c] : 0;
    }
#endif
    for (int64_t r0 = row_begin, tile = 0; r0 < row_end; r0 += kRows, ++tile) {
      const int rows = static_cast<int>(smaller(kRows, row_end - r0));
      // The rows in place; a last tile short of kRows from a copy padded with zero rows (copying every
      // tile, per sub-block, took 5 % of the screened top-8 at 8192 x 16384 x 64).
      const float* query = b.query + r0 * dim;
      if (rows < kRows) {
        for (int64_t i = 0; i < kRows * dim; ++i) last_tile.data[i] = i < rows * dim ? query[i] : 0.f;
        query = last_tile.data;
      }
      Floats threshold[kRows], window[kRows], screen_threshold[kRows];
      for (int r = 0; r < kRows; ++r) {  // padding rows: +inf, nothing enters
        threshold[r] = Floats{} + (r < rows ? b.state_score[(r0 + r) * k + k - 1] : INFINITY);
        window[r] = Floats{} + (screen && r < rows ? b.window[r0 + r] : 0.f);
        screen_threshold[r] = threshold[r] - window[r];
      }
      int64_t idle_vectors = 0;  // float32 vectors of the screen that entered nothing
      const bool walking = !screen || walks.data[tile];  // known at compile time without the screen
      Pending pending[kPending];
      int queued = 0;
      // Offers the pending vectors, oldest first, so each row's in index order. Until then later steps
      // screen against older thresholds: lower, so they only pass more vectors.
      auto offer_pending = [&]() {
        Floats scores[kPending];
        rescore_all(pending, queued, dim, b.alpha, scores);
        for (int i = 0; i < queued; ++i) {
          const int r = pending[i].row;
          idle_vectors += !offer(scores[i], threshold[r], b.state_score + (r0 + r) * k, b.state_index + (r0 + r) * k,
                                 k, pending[i].first);
          screen_threshold[r] = threshold[r] - window[r];
        }
        counts.float32 += queued;
        queued = 0;
      };
      for (int64_t step = 0; step < steps; ++step) {
        const float* panel = packed.data + step * dim * kWidth;
        const int64_t first = b.first_index + m0 + step * kWidth;
        Floats acc[kRows][kPanels] = {};
        uint32_t offered = walking ? ~0u : 0u;  // bit r * kPanels + p: vectors scored in float32
        counts.vectors += rows * kPanels;
        if (!walking) {
#if REFMATCH_CPU_ISA == 3
          screened_dots(query_pairs.data + tile * kRows * pairs, packed_pairs.data + step * pairs * kWidth, pairs, acc);
#endif
          for (int p = 0; p < kPanels; ++p) {
            Floats column_bias;
            std::memcpy(&column_bias, bias.data + step * kWidth + p * kLanes, sizeof(Floats));
            for (int r = 0; r < kRows; ++r) {
              const Floats screened = multiply_add(acc[r][p], Floats{} + b.alpha, column_bias);
              offered |= static_cast<uint32_t>(lanes_above(screened, screen_threshold[r]) != 0) << (r * kPanels + p);
            }
          }
        }
        // The whole step in float32 where enough vectors need it (its 12 FMA chains share each
        // reference load); else the vectors wait, kPending at a time.
        if (!walking && __builtin_popcount(offered) < kWholeStepVectors) {
          for (int p = 0; p < kPanels; ++p)
            for (int r = 0; r < kRows; ++r) {
              if (!(offered >> (r * kPanels + p) & 1u)) continue;
              pending[queued++] = {query + r * dim, panel + p * kLanes, bias.data + step * kWidth + p * kLanes, r,
                                   first + p * kLanes};
              if (queued == kPending) offer_pending();
            }
          continue;
        }
        if (queued) offer_pending();  // earlier steps' vectors first
        for (int r = 0; r < kRows; ++r)  // (they held the screened sums)
          for (int p = 0; p < kPanels; ++p) acc[r][p] = Floats{};
        for (int64_t c = 0; c < dim; ++c) {
          Floats ref[kPanels];
          for (int p = 0; p < kPanels; ++p) std::memcpy(&ref[p], panel + c * kWidth + p * kLanes, sizeof(Floats));
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            const Floats q = Floats{} + query[r * dim + c];
#pragma GCC unroll 4
            for (int p = 0; p < kPanels; ++p) acc[r][p] = multiply_add(q, ref[p], acc[r][p]);
          }
        }
        counts.float32 += rows * kPanels;
#pragma GCC unroll 4
        for (int p = 0; p < kPanels; ++p) {
          Floats column_bias;
          std::memcpy(&column_bias, bias.data + step * kWidth + p * kLanes, sizeof(Floats));
#pragma GCC unroll 16
          for (int r = 0; r < kRows; ++r) {
            if (!(offered >> (r * kPanels + p) & 1u)) continue;
            const Floats score = multiply_add(acc[r][p], Floats{} + b.alpha, column_bias);
            const bool entered = offer(score, threshold[r], b.state_score + (r0 + r) * k, b.state_index + (r0 + r) * k,
                                       k, first + p * kLanes);
            idle_vectors += !walking && !entered;
            screen_threshold[r] = threshold[r] - window[r];
          }
        }
      }
      if (queued) offer_pending();
      // Not on the walk's first sub-block, where every list fills.
      walks.data[tile] = walks.data[tile] || (idle_vectors > kCrowdedVectors && b.first_index + m0 > 0);
    }
  }
  return counts;
}

}  // namespace

#if REFMATCH_CPU_ISA == 1
TopkCounts cpu_topk_rows_avx512(const TopkBlock& block, int64_t begin, int64_t end) {
  return topk_rows(block, begin, end);
}
#elif REFMATCH_CPU_ISA == 2
TopkCounts cpu_topk_rows_avx2(const TopkBlock& block, int64_t begin, int64_t end) {
  return topk_rows(block, begin, end);
}
#else
TopkCounts cpu_topk_rows_avx512_bf16(const TopkBlock& block, int64_t begin, int64_t end) {
  return topk_rows(block, begin, end);
}
#endif

}  // namespace refmatch
