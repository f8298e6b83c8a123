// The CPU fused top-k's vectors (csrc/cpu_topk_isa.cpp, the only file that includes this, once
// per vector width REFMATCH_CPU_ISA): the tile shape, the vector type, each row's sorted list
// and the float32 rescoring of the screen's vectors. Internal linkage throughout, as there.
#pragma once

#include <cstdint>
#include <cstring>
#include <immintrin.h>

namespace refmatch {
namespace {

// Per vector width: the tile shape, the vector type, the lanes of `score` above
// `threshold` as bits (lane 0 lowest), and a * b + c rounded once: spelled out, so
// that the screen's float32 vectors and the walk's are the same operations.
#if REFMATCH_CPU_ISA == 1 || REFMATCH_CPU_ISA == 3
constexpr int kLanes = 16, kRows = 6, kPanels = 2;
typedef float Floats __attribute__((vector_size(64)));
uint32_t lanes_above(Floats score, Floats threshold) {
  return _mm512_cmp_ps_mask((__m512)score, (__m512)threshold, _CMP_GT_OQ);
}
Floats multiply_add(Floats a, Floats b, Floats c) { return (Floats)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#elif REFMATCH_CPU_ISA == 2
constexpr int kLanes = 8, kRows = 4, kPanels = 2;
typedef float Floats __attribute__((vector_size(32)));
uint32_t lanes_above(Floats score, Floats threshold) {
  return static_cast<uint32_t>(_mm256_movemask_ps(
      _mm256_cmp_ps((__m256)score, (__m256)threshold, _CMP_GT_OQ)));
}
Floats multiply_add(Floats a, Floats b, Floats c) { return (Floats)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
#error "REFMATCH_CPU_ISA must be 1 (AVX-512), 2 (AVX2) or 3 (AVX-512 with the bfloat16 screen)"
#endif
constexpr int kWidth = kLanes * kPanels;

// A list of k <= kLanes in one vector: the slot is the count of scores >= the new one (a
// sorted prefix; equal scores stay ahead, as lower indices), the lanes behind it move up one.
// No branch: the binary search's mispredicted steps and two memmove calls cost 3-4 times more.
#if REFMATCH_CPU_ISA == 1 || REFMATCH_CPU_ISA == 3
float insert_short(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  const __mmask16 kept = static_cast<__mmask16>((1u << k) - 1);
  const __m512 list = _mm512_maskz_loadu_ps(kept, scores), entering = _mm512_set1_ps(score);
  const __m512i ids = _mm512_maskz_loadu_epi32(kept, indices);
  const int slot = __builtin_popcount(_mm512_mask_cmp_ps_mask(kept, list, entering, _CMP_GE_OQ));
  const __m512i from_below = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
  const __mmask16 behind = static_cast<__mmask16>(kept & ~((2u << slot) - 1)), at = static_cast<__mmask16>(1u << slot);
  const __m512 moved = _mm512_mask_mov_ps(_mm512_mask_permutexvar_ps(list, behind, from_below, list), at, entering);
  const __m512i moved_ids = _mm512_mask_mov_epi32(_mm512_mask_permutexvar_epi32(ids, behind, from_below, ids), at,
                                                  _mm512_set1_epi32(index));
  _mm512_mask_storeu_ps(scores, kept, moved);
  _mm512_mask_storeu_epi32(indices, kept, moved_ids);
  return _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(static_cast<int>(k - 1)), moved));
}
#else
float insert_short(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i kept = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), lane);
  const __m256 list = _mm256_maskload_ps(scores, kept), entering = _mm256_set1_ps(score);
  const __m256i ids = _mm256_maskload_epi32(indices, kept);
  const int slot = __builtin_popcount(
      static_cast<uint32_t>(_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(list, entering, _CMP_GE_OQ),
                                                             _mm256_castsi256_ps(kept)))));
  const __m256i from_below = _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6), at_slot = _mm256_set1_epi32(slot);
  const __m256 behind = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, at_slot));
  const __m256 at = _mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, at_slot));
  const __m256 moved = _mm256_blendv_ps(
      _mm256_blendv_ps(list, _mm256_permutevar8x32_ps(list, from_below), behind), entering, at);
  const __m256 moved_ids = _mm256_blendv_ps(
      _mm256_blendv_ps(_mm256_castsi256_ps(ids), _mm256_permutevar8x32_ps(_mm256_castsi256_ps(ids), from_below),
                       behind),
      _mm256_castsi256_ps(_mm256_set1_epi32(index)), at);
  _mm256_maskstore_ps(scores, kept, moved);
  _mm256_maskstore_epi32(indices, kept, _mm256_castps_si256(moved_ids));
  return _mm256_cvtss_f32(_mm256_permutevar8x32_ps(moved, _mm256_set1_epi32(static_cast<int>(k - 1))));
}
#endif

// Inserts (score, index) into a row's sorted list of k, above its k-th score; returns the new k-th.
// Longer lists: a binary search for the first score below it (equal scores stay ahead: lower
// indices), then one move of the tail, so long lists (k in the hundreds) stay cheap.
float insert(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  if (k <= kLanes) return insert_short(scores, indices, k, score, index);
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

// Offers one vector of a row's scores (references first, first + 1, ...) to its list
// behind `threshold`, its k-th score in every lane; whether any entered.
bool offer(Floats score, Floats& threshold, float* scores, int32_t* indices, int64_t k, int64_t first) {
  uint32_t above = lanes_above(score, threshold);
  if (__builtin_expect(above == 0, 1)) return false;
  float kth = threshold[0];
  for (; above; above &= above - 1) {
    const int lane = __builtin_ctz(above);
    if (score[lane] > kth) kth = insert(scores, indices, k, score[lane], static_cast<int32_t>(first + lane));
  }
  threshold = Floats{} + kth;  // the k-th may have risen within this vector
  return true;
}

// A screened vector waiting to be scored in float32: a row of the tile against a panel of a step.
struct Pending {
  const float* query_row;  // D floats
  const float* panel;      // the step's panel: D vectors, kWidth floats apart
  const float* bias;       // its kLanes biases
  int row;                 // within the tile
  int64_t first;           // index of its lane 0
};
constexpr int kPending = 8;  // scored together: 8 independent FMA chains hide the FMA's latency

// Float32 scores of N pending vectors, each as the walk computes it (one FMA chain over D, in order).
template <int N>
void rescore(const Pending* pending, int64_t dim, float alpha, Floats* scores) {
  Floats acc[N] = {};
  for (int64_t c = 0; c < dim; ++c) {
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) {
      Floats ref;
      std::memcpy(&ref, pending[i].panel + c * kWidth, sizeof(Floats));
      acc[i] = multiply_add(Floats{} + pending[i].query_row[c], ref, acc[i]);
    }
  }
  for (int i = 0; i < N; ++i) {
    Floats column_bias;
    std::memcpy(&column_bias, pending[i].bias, sizeof(Floats));
    scores[i] = multiply_add(acc[i], Floats{} + alpha, column_bias);
  }
}

// Float32 scores of `count` <= kPending pending vectors, in groups of 8, 4, 2 and 1.
void rescore_all(const Pending* pending, int count, int64_t dim, float alpha, Floats* scores) {
  int done = 0;
  if (count - done >= 8) rescore<8>(pending + done, dim, alpha, scores + done), done += 8;
  if (count - done >= 4) rescore<4>(pending + done, dim, alpha, scores + done), done += 4;
  if (count - done >= 2) rescore<2>(pending + done, dim, alpha, scores + done), done += 2;
  if (count - done >= 1) rescore<1>(pending + done, dim, alpha, scores + done);
}

}  // namespace
}  // namespace refmatch
