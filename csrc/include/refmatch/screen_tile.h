// Candidates of one screened tile for the CPU's bfloat16 screen
// (refmatch/backends/screen_candidates.py, ScreenCandidates.offer): host C++,
// one pass over the tile instead of about forty tensor operations.
//
// Algorithm (per row of the tile; the same results as the torch pass)
//   Run maxima: the row's columns in runs of `run_width` (k = 1: the whole row;
//   top k: 64, the last run shorter), each maximum taken over int16 keys of the
//   bfloat16 bits that order as the values do. A row whose maximum is below its
//   floor (k-th bound minus window) is done. Otherwise the k-th bound rises:
//   k = 1 to the row maximum; top k, while the row keeps fewer than k scores, to
//   the k-th best of the kept scores and the whole row, else to the k-th best of
//   the kept scores and the run maxima. Then the runs whose maximum reaches the
//   new floor are read, compared on keys 64 columns at a time, and each column
//   at or above the floor is a candidate (row, column, score), in ascending row
//   and column order.
//
// Speed (8192 x 65536 x 128, one Zen 4 core): about 0.45 ms per 8 MiB top-8
// tile, 0.17 ms of it reading the tile for the run maxima; 58 ms per top-8 call
// against some 160 ms for the torch pass. One thread: the GEMM's OpenMP threads
// spin between tiles, and a second thread here ran slower.
//
// Limits: no NaN in the tile (the screen leaves NaN references and rows out);
// `top` holds k scores per row, best first; k <= 64 (the screen's MAX_K is 16).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(_MSC_VER)
#include <intrin.h>
#endif

// One copy per x86-64 level, picked at load time (ifunc on Linux): the int16 maxima run 8,
// 16 or 32 lanes wide. Levels as clone targets need GCC 12; Clang before 18 never picks them.
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 18) || (!defined(__clang__) && __GNUC__ >= 12))
#define REFMATCH_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REFMATCH_CPU_CLONES
#endif

namespace refmatch {

struct TileCandidates {
  std::vector<int64_t> rows, cols;
  std::vector<float> scores;
  int64_t near_rows = 0;  // rows whose maximum reached their floor
};

// int16 key of a bfloat16 bit pattern that orders as the values do (-0 just below +0).
inline int16_t bf16_order_key(uint16_t bits) {
  const int16_t signed_bits = static_cast<int16_t>(bits);
  return static_cast<int16_t>(signed_bits ^ ((signed_bits >> 15) & 0x7FFF));
}

inline float bf16_value(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

inline float bf16_key_value(int16_t key) {
  return bf16_value(static_cast<uint16_t>(key ^ ((key >> 15) & 0x7FFF)));
}

// The smallest key whose value is >= `floor` (not NaN): float comparisons become key ones.
inline int16_t floor_key(float floor) {
  if (floor == 0.0f) return bf16_order_key(0x8000);  // -0 >= +0 as floats
  uint32_t bits;
  std::memcpy(&bits, &floor, sizeof(bits));
  uint16_t high = static_cast<uint16_t>(bits >> 16);
  if ((bits & 0xFFFF) != 0 && (bits >> 31) == 0) ++high;  // positive and between two bfloat16s
  return bf16_order_key(high);
}

// Largest key of `count` bfloat16 values: one vectorisable pass (pmaxsw and wider).
inline int16_t run_max_key(const uint16_t* values, int64_t count) {
  int16_t best = INT16_MIN;
  for (int64_t i = 0; i < count; ++i) {
    const int16_t key = bf16_order_key(values[i]);
    best = key > best ? key : best;
  }
  return best;
}

inline int lowest_set_bit(uint64_t bits) {  // bits != 0
#if defined(_MSC_VER)
  unsigned long index;
  _BitScanForward64(&index, bits);
  return static_cast<int>(index);
#else
  return __builtin_ctzll(bits);
#endif
}

// Bit i set where values[i] >= the threshold's value, i < count <= 64: the compares
// vectorise into a byte per column, and a multiply packs each 8 bytes into 8 bits.
inline uint64_t columns_at_least(const uint16_t* values, int64_t count, int16_t threshold) {
  uint8_t flags[64] = {};
  for (int64_t i = 0; i < count; ++i) flags[i] = bf16_order_key(values[i]) >= threshold;
  uint64_t hits = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (int i = 0; i < 64; ++i) hits |= static_cast<uint64_t>(flags[i]) << i;
#else
  for (int byte = 0; byte < 8; ++byte) {
    uint64_t eight;
    std::memcpy(&eight, flags + 8 * byte, sizeof(eight));
    hits |= ((eight * 0x0102040810204080ull) >> 56) << (8 * byte);  // byte j's 0/1 to bit j
  }
#endif
  return hits;
}

// Keep the k largest of `kept` (best first) and `value`.
inline void keep_if_larger(float* kept, int k, float value) {
  if (!(value > kept[k - 1])) return;
  int slot = k - 1;
  while (slot > 0 && kept[slot - 1] < value) {
    kept[slot] = kept[slot - 1];
    --slot;
  }
  kept[slot] = value;
}

// One tile [rows, width] of bfloat16 bits, row-major. top: [rows, k] kept scores and
// bound: [rows] k-th bounds of these rows (both updated); window: [rows]. Appends the
// candidates, their rows counted from 0, to `out`.
REFMATCH_CPU_CLONES inline void screen_tile(const uint16_t* tile, int64_t rows, int64_t width, int k, float* top, float* bound,
                        const float* window, TileCandidates& out) {
  const int64_t run_width = k == 1 ? width : 64;
  const int64_t runs = (width + run_width - 1) / run_width;
  std::vector<int16_t> run_max(static_cast<size_t>(runs));
  for (int64_t row = 0; row < rows; ++row) {
    const uint16_t* values = tile + row * width;
    int16_t row_max = INT16_MIN;
    for (int64_t run = 0; run < runs; ++run) {
      const int64_t begin = run * run_width;
      run_max[run] = run_max_key(values + begin, width - begin < run_width ? width - begin : run_width);
      row_max = run_max[run] > row_max ? run_max[run] : row_max;
    }
    const float row_best = bf16_key_value(row_max);
    if (!(row_best >= bound[row] - window[row])) continue;
    ++out.near_rows;
    if (k == 1) {  // k = 1 keeps its bound alone
      bound[row] = row_best > bound[row] ? row_best : bound[row];
    } else {
      float* kept = top + row * k;
      if (std::isinf(kept[k - 1]) && kept[k - 1] < 0) {  // the row's first scores
        for (int64_t col = 0; col < width; ++col) keep_if_larger(kept, k, bf16_value(values[col]));
      } else if (row_best > kept[k - 1]) {
        for (int64_t run = 0; run < runs; ++run) keep_if_larger(kept, k, bf16_key_value(run_max[run]));
      }
      bound[row] = kept[k - 1];
    }
    const int16_t threshold = floor_key(bound[row] - window[row]);
    for (int64_t run = 0; run < runs; ++run) {
      if (run_max[run] < threshold) continue;
      const int64_t begin = run * run_width, end = begin + run_width < width ? begin + run_width : width;
      for (int64_t block = begin; block < end; block += 64) {
        const uint64_t hits = columns_at_least(values + block, end - block < 64 ? end - block : 64, threshold);
        for (uint64_t rest = hits; rest != 0; rest &= rest - 1) {
          const int64_t col = block + lowest_set_bit(rest);
          out.rows.push_back(row);
          out.cols.push_back(col);
          out.scores.push_back(bf16_value(values[col]));
        }
      }
    }
  }
}

}  // namespace refmatch
