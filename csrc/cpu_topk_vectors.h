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

// Lists of k <= kShortList sit in up to 4 vectors. The slot is the count of scores >= the new
// one (a sorted prefix; equal scores stay ahead, as lower indices); from the slot's vector on,
// the lanes behind it move up one, lane 0 taking the previous vector's last. No data-dependent
// branch but the count's end: the binary search's mispredicted steps and two memmove calls
// cost 3-4 times more.
constexpr int64_t kShortList = 4 * kLanes;
#if REFMATCH_CPU_ISA == 1 || REFMATCH_CPU_ISA == 3
__mmask16 lanes_in_list(int64_t k, int64_t first) {
  return k - first >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << (k - first)) - 1);
}

float insert_short(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  const __m512 entering = _mm512_set1_ps(score);
  int64_t slot = 0, first = 0;
  for (; first < k; first += kLanes) {
    const __mmask16 kept = lanes_in_list(k, first);
    const int ahead = __builtin_popcount(
        _mm512_mask_cmp_ps_mask(kept, _mm512_maskz_loadu_ps(kept, scores + first), entering, _CMP_GE_OQ));
    slot += ahead;
    if (ahead < __builtin_popcount(kept)) break;  // a lane below it: the slot's vector
  }
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i from_below = _mm512_add_epi32(lane, _mm512_set1_epi32(15));  // (previous, list): 15, 16, ..
  __m512 previous = entering, moved = entering;
  __m512i previous_ids = _mm512_setzero_si512();
  for (; first < k; first += kLanes) {  // from the slot's vector: those before it keep their lanes
    const __mmask16 kept = lanes_in_list(k, first);
    const __m512 list = _mm512_maskz_loadu_ps(kept, scores + first);
    const __m512i ids = _mm512_maskz_loadu_epi32(kept, indices + first);
    const __m512i position = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(first)));
    const __mmask16 behind = _mm512_cmpgt_epi32_mask(position, _mm512_set1_epi32(static_cast<int>(slot)));
    const __mmask16 at = _mm512_cmpeq_epi32_mask(position, _mm512_set1_epi32(static_cast<int>(slot)));
    moved = _mm512_mask_mov_ps(_mm512_mask_blend_ps(behind, list, _mm512_permutex2var_ps(previous, from_below, list)),
                               at, entering);
    const __m512i moved_ids = _mm512_mask_mov_epi32(
        _mm512_mask_blend_epi32(behind, ids, _mm512_permutex2var_epi32(previous_ids, from_below, ids)), at,
        _mm512_set1_epi32(index));
    _mm512_mask_storeu_ps(scores + first, kept, moved);
    _mm512_mask_storeu_epi32(indices + first, kept, moved_ids);
    previous = list, previous_ids = ids;
  }
  const int last = static_cast<int>((k - 1) % kLanes);  // the k-th score: in the last vector stored
  return _mm512_cvtss_f32(_mm512_permutexvar_ps(_mm512_set1_epi32(last), moved));
}
#else
__m256i lanes_in_list(int64_t k, int64_t first) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k - first)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

float insert_short(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  const __m256 entering = _mm256_set1_ps(score);
  int64_t slot = 0, first = 0;
  for (; first < k; first += kLanes) {
    const __m256i kept = lanes_in_list(k, first);
    const __m256 ge = _mm256_and_ps(_mm256_cmp_ps(_mm256_maskload_ps(scores + first, kept), entering, _CMP_GE_OQ),
                                    _mm256_castsi256_ps(kept));
    const int ahead = __builtin_popcount(static_cast<uint32_t>(_mm256_movemask_ps(ge)));
    slot += ahead;
    if (ahead < (k - first < kLanes ? k - first : kLanes)) break;  // a lane below it: the slot's vector
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i from_below = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
  const __m256 lane_zero = _mm256_castsi256_ps(_mm256_cmpeq_epi32(lane, _mm256_setzero_si256()));
  __m256 previous = entering, previous_ids = entering, moved = entering;
  for (; first < k; first += kLanes) {  // from the slot's vector: those before it keep their lanes
    const __m256i kept = lanes_in_list(k, first);
    const __m256 list = _mm256_maskload_ps(scores + first, kept);
    const __m256 ids = _mm256_castsi256_ps(_mm256_maskload_epi32(indices + first, kept));
    const __m256i position = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(first)));
    const __m256i at_slot = _mm256_set1_epi32(static_cast<int>(slot));
    const __m256 behind = _mm256_castsi256_ps(_mm256_cmpgt_epi32(position, at_slot));
    const __m256 at = _mm256_castsi256_ps(_mm256_cmpeq_epi32(position, at_slot));
    // lanes up one: lane 0 takes the previous vector's lane 7
    const __m256 up = _mm256_blendv_ps(_mm256_permutevar8x32_ps(list, from_below),
                                       _mm256_permutevar8x32_ps(previous, from_below), lane_zero);
    const __m256 up_ids = _mm256_blendv_ps(_mm256_permutevar8x32_ps(ids, from_below),
                                           _mm256_permutevar8x32_ps(previous_ids, from_below), lane_zero);
    moved = _mm256_blendv_ps(_mm256_blendv_ps(list, up, behind), entering, at);
    const __m256 moved_ids = _mm256_blendv_ps(_mm256_blendv_ps(ids, up_ids, behind),
                                              _mm256_castsi256_ps(_mm256_set1_epi32(index)), at);
    _mm256_maskstore_ps(scores + first, kept, moved);
    _mm256_maskstore_epi32(indices + first, kept, _mm256_castps_si256(moved_ids));
    previous = list, previous_ids = ids;
  }
  const int last = static_cast<int>((k - 1) % kLanes);  // the k-th score: in the last vector stored
  return _mm256_cvtss_f32(_mm256_permutevar8x32_ps(moved, _mm256_set1_epi32(last)));
}
#endif

// Inserts (score, index) into a row's sorted list of k, above its k-th score; returns the new k-th.
// Longer lists: a binary search for the first score below it (equal scores stay ahead: lower
// indices), then one move of the tail, so long lists (k in the hundreds) stay cheap.
float insert(float* scores, int32_t* indices, int64_t k, float score, int32_t index) {
  if (k <= kShortList) return insert_short(scores, indices, k, score, index);
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
