// Per-tile epilogues of the fused CUDA match kernels: fold one finished score
// tile (bank rows m0 .. m0 + 8 kN - 1) into per-row state without writing
// scores anywhere. The accumulators are m16n8 fragments, as mma.sync and wgmma
// both leave them: element e of atom [i][j] is row R i + lane/4 + 8 (e/2) of the
// warp's rows, column 8 j + 2 (lane%4) + e%2 (R: 16 for a warp's mma.sync atoms,
// 64 for wgmma's row blocks), so a row lives in one quad of lanes.
//
//   fold_tile       k = 1: a running best per row (refmatch::offer).
//   fold_tile_topk  k = 2 .. 64: a sorted list per row in global or shared memory
//                   (refmatch/topk_list.h); registers hold its last slot.
//   init_topk_lists the lists a fold_tile_topk starts from: empty slots.
//   copy_topk_lists lists kept in shared memory, to the outputs at the end.
//
// Both take each lane's max of each row first (a tree, one fmaxf per score; fmaxf
// skips NaN, and NaN equals nothing, so NaN never wins) and do more, shuffles
// included, only when some row of the warp can improve: one vote a tile on the
// fast path. Their shuffles and votes come from the Warp parameter
// (warp_ops.h): the hardware warp in the kernels, 32 host threads in the CPU
// tests (host_warp.h, refmatch._C.stream_tiles), which so run this very code.
#pragma once

#include <cstdint>

#include "refmatch/best.h"
#include "refmatch/match_plan.h"
#include "refmatch/topk_list.h"
#include "refmatch/warp_ops.h"

namespace refmatch::detail {

// Each score s of the tile becomes orient(s, term), term its bank row's metric term.
template <int kM, int kN, class Orient>
REFMATCH_HOST_DEVICE void apply_metric_terms(float (&acc)[kM][kN][4], const float* stats, int quad_lane,
                                             Orient orient) {
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    // Two 4-byte reads, not one float2: the TMA box of a range that starts at an odd
    // row leaves the tile's terms 4-byte aligned only (hopper_stat_lead).
    const float* pair = stats + 8 * j + 2 * quad_lane;
    const float even = pair[0], odd = pair[1];
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = orient(acc[i][j][e], e % 2 ? odd : even);
  }
}

// Scores oriented so that larger wins (cosine: times 1/|r|; l2: 2 q.r - |r|^2),
// padding past the bank at -inf: one uniform branch per tile, one instruction per score.
// One loop per metric: a select inside one loop is compiled to both instructions,
// predicated, which costs two issue slots per score.
template <int kM, int kN>
REFMATCH_HOST_DEVICE void orient_tile(float (&acc)[kM][kN][4], const float* stats, int metric, int64_t m0,
                                      int64_t m_end, int quad_lane) {
  if (metric == static_cast<int>(MatchMetric::kCosine)) {
    apply_metric_terms(acc, stats, quad_lane, [](float score, float term) { return score * term; });
  } else if (metric == static_cast<int>(MatchMetric::kL2)) {
    apply_metric_terms(acc, stats, quad_lane, [](float score, float term) { return fmaf(2.f, score, -term); });
  }
  if (m_end - m0 < 8 * kN) {  // only the last tile has padding
    const int valid_cols = static_cast<int>(m_end - m0);
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int i = 0; i < kM; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (8 * j + 2 * quad_lane + e % 2 >= valid_cols) acc[i][j][e] = -INFINITY;
  }
}

// `value`, which the optimiser may no longer move out of the loop computing it.
REFMATCH_HOST_DEVICE int64_t opaque(int64_t value) {
#if defined(__CUDA_ARCH__)
  asm volatile("" : "+l"(value));
#endif
  return value;
}

// Each row's max over the thread's scores of the tile: a tree over its 2 kN scores
// (depth log2, where a running max is a chain of 2 kN dependent instructions), all
// rows side by side so that their trees overlap.
template <int kM, int kN>
REFMATCH_HOST_DEVICE void lane_row_maxima(const float (&acc)[kM][kN][4], float (&maxima)[kM][2]) {
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float part[kN];
#pragma unroll
      for (int j = 0; j < kN; ++j) part[j] = fmaxf(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
#pragma unroll
      for (int stride = 1; stride < kN; stride *= 2)
#pragma unroll
        for (int j = 0; j + stride < kN; j += 2 * stride) part[j] = fmaxf(part[j], part[j + stride]);
      maxima[i][h] = part[0];
    }
}

// The lanes' maxima of each row made the row's max, shared by its quad: both shuffle
// rounds for all rows side by side.
template <class Warp, int kM>
REFMATCH_HOST_DEVICE void share_in_quads(float (&maxima)[kM][2]) {
#pragma unroll
  for (int lane_mask = 1; lane_mask <= 2; lane_mask *= 2)
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) maxima[i][h] = fmaxf(maxima[i][h], Warp::shfl_xor(maxima[i][h], lane_mask));
}

template <int kM, int kN, class Warp = DeviceWarp>
REFMATCH_HOST_DEVICE void fold_tile(float (&acc)[kM][kN][4], Best (&best)[kM][2], const float* stats,
                                    int metric, int64_t m0, int64_t m_end, int lane) {
  constexpr int kCols = 8 * kN;
  const int quad_lane = lane & 3;
  orient_tile(acc, stats, metric, m0, m_end, quad_lane);
  // A row can improve where one of its lanes' own maxima beats the row's best (the quad's
  // lanes hold the same best) at m0, the tile's lowest index: the fast path needs no shuffles.
  float tile_max[kM][2];
  lane_row_maxima(acc, tile_max);
  bool may_improve = false;
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) may_improve |= beats(tile_max[i][h], m0, best[i][h].score, best[i][h].index);
  // Locating is rare once the running bests are good; warp-uniform for the shuffles.
  if (!Warp::any(may_improve)) return;
  share_in_quads<Warp>(tile_max);
#pragma unroll
  for (int i = 0; i < kM; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int lowest = kCols;
#pragma unroll
      for (int j = kN - 1; j >= 0; --j) {
        if (acc[i][j][2 * h + 1] == tile_max[i][h]) lowest = 8 * j + 2 * quad_lane + 1;
        if (acc[i][j][2 * h] == tile_max[i][h]) lowest = 8 * j + 2 * quad_lane;
      }
      for (int lane_mask = 1; lane_mask <= 2; lane_mask *= 2) {
        const int other = Warp::shfl_xor(lowest, lane_mask);
        lowest = other < lowest ? other : lowest;
      }
      if (lowest < kCols) offer(best[i][h], tile_max[i][h], m0 + lowest);
    }
  }
}

// Top-k. `threshold` holds each row's last list slot; `lists` points at row
// first_row's k slots (scores, indices), rows k apart; rows at or past num_rows
// are padding and never enter. Atom i holds rows first_row + kAtomRows i (+ 8):
// 16 for a warp's mma.sync atoms, 64 for wgmma's 64-row blocks. The four lanes
// of a quad take turns inserting their candidates into the row's list (one
// writer per list at a time), then share the raised threshold.
template <int kAtomRows, int kM, int kN, class Warp = DeviceWarp>
REFMATCH_HOST_DEVICE void fold_tile_topk(float (&acc)[kM][kN][4], Best (&threshold)[kM][2],
                                         const float* stats, int metric, int64_t m0, int64_t m_end, int lane,
                                         float* list_scores, int64_t* list_indices, int64_t first_row,
                                         int64_t num_rows, int k) {
  const int quad_lane = lane & 3;
  orient_tile(acc, stats, metric, m0, m_end, quad_lane);
  // A lane whose own best score of a row cannot beat the row's threshold (at the tile's
  // lowest index) has nothing to insert, whatever the other lanes insert first, as
  // thresholds only rise: it skips its turn's scan. A row enters where one of its lanes does.
  float lane_max[kM][2];
  lane_row_maxima(acc, lane_max);
  bool enters[kM][2];
  bool any_enters = false;
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      enters[i][h] = first_row + kAtomRows * i + 8 * h < num_rows &&
                     beats(lane_max[i][h], m0, threshold[i][h].score, threshold[i][h].index);
      any_enters |= enters[i][h];
    }
  if (!Warp::any(any_enters)) return;
  for (int turn = 0; turn < 4; ++turn) {
    // Warp-uniform: no lane whose turn it is enters, so no list changes and the thresholds stand.
    if (!Warp::any(any_enters && quad_lane == turn)) continue;
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (!enters[i][h] || quad_lane != turn) continue;
        const int64_t row_offset = (first_row + kAtomRows * i + 8 * h) * k;
        // Recomputed each turn: hoisted, the 2 kN 64-bit indices stay live across the
        // turns (64 registers for wgmma's 256 rows, which then spilled).
        const int64_t lane_first_index = opaque(m0 + 2 * quad_lane);
#pragma unroll
        for (int j = 0; j < kN; ++j)
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            const float score = acc[i][j][2 * h + t];
            const int64_t index = lane_first_index + 8 * j + t;
            if (beats(score, index, threshold[i][h].score, threshold[i][h].index)) {
              threshold[i][h] = insert_sorted(list_scores + row_offset, list_indices + row_offset, k, score, index);
            }
          }
      }
    Warp::sync();  // this turn's list writes, before the next lane reads them
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int source = (lane & ~3) | turn;
        threshold[i][h].score = Warp::shfl(threshold[i][h].score, source);
        threshold[i][h].index = Warp::shfl(threshold[i][h].index, source);
      }
  }
}

// Calls visit(slot offset) for every list slot of a thread's rows below num_rows (as
// fold_tile_topk numbers them: first_row + kAtomRows i (+ 8)), rows k slots apart, each
// quad's lanes sharing a row's slots.
template <int kAtomRows, int kM, class Visit>
REFMATCH_HOST_DEVICE void for_each_list_slot(int64_t first_row, int64_t num_rows, int k, int lane, Visit visit) {
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = first_row + kAtomRows * i + 8 * h;
      for (int slot = lane % 4; row < num_rows && slot < k; slot += 4) visit(row * k + slot);
    }
}

// Empties the k-slot lists of a thread's rows; the warp syncs before its first fold.
template <int kAtomRows, int kM, class Warp = DeviceWarp>
REFMATCH_HOST_DEVICE void init_topk_lists(float* list_scores, int64_t* list_indices, int64_t first_row,
                                          int64_t num_rows, int k, int lane) {
  for_each_list_slot<kAtomRows, kM>(first_row, num_rows, k, lane, [&](int64_t slot) {
    list_scores[slot] = -INFINITY;
    list_indices[slot] = kNoMatch;
  });
  Warp::sync();
}

// Copies a thread's rows' lists from `from` to `to`, whose rows are `row_shift` further
// on; after the warp's last fold (whose turns' writes other lanes made).
template <int kAtomRows, int kM, class Warp = DeviceWarp>
REFMATCH_HOST_DEVICE void copy_topk_lists(const float* from_scores, const int64_t* from_indices, float* to_scores,
                                          int64_t* to_indices, int64_t first_row, int64_t row_shift,
                                          int64_t num_rows, int k, int lane) {
  Warp::sync();
  for_each_list_slot<kAtomRows, kM>(first_row, num_rows, k, lane, [&](int64_t slot) {
    to_scores[slot + row_shift * k] = from_scores[slot];
    to_indices[slot + row_shift * k] = from_indices[slot];
  });
}

}  // namespace refmatch::detail
