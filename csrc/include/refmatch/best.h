// Tie rule and merge of partial (score, index) bests, shared by host and device.
//
// Every backend keeps, per query row, the best (score, index) seen so far, with
// scores oriented so that larger is better (l2 kernels maximise 2 q.r - |r|^2).
// The rule, identical in every tile, split and backend:
//   * NaN and -inf never win, so a row with no finite score keeps index -1;
//   * a larger score wins; among exactly equal scores the lower index wins.
// Because the rule is a strict total order on valid candidates, merging
// partial bests in any grouping (tiles, M-splits, shards) gives one answer.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define REFMATCH_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define REFMATCH_HOST_DEVICE inline
#endif

namespace refmatch {

constexpr int64_t kNoMatch = -1;

struct Best {
  float score;
  int64_t index;
};

REFMATCH_HOST_DEVICE Best empty_best() { return Best{-INFINITY, kNoMatch}; }

// True when (score, index) should replace (best_score, best_index). Bitwise, not
// short-circuit, operators: compares and no branches (a tile's fast path makes a few).
REFMATCH_HOST_DEVICE bool beats(float score, int64_t index, float best_score,
                                int64_t best_index) {
  const bool valid = score > -INFINITY;  // false for NaN and -inf
  return valid & ((best_index < 0) | (score > best_score) | ((score == best_score) & (index < best_index)));
}

REFMATCH_HOST_DEVICE void offer(Best& best, float score, int64_t index) {
  if (beats(score, index, best.score, best.index)) best = Best{score, index};
}

REFMATCH_HOST_DEVICE Best merge(Best a, const Best& b) {
  offer(a, b.score, b.index);
  return a;
}

}  // namespace refmatch
