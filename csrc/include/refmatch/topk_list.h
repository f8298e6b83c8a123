// Per-row top-k lists of the fused CUDA top-k (k = 2 .. 64), shared by host and device.
//
// A row's list is k (score, index) slots, best first in the order of best.h
// (larger score, then lower index); empty slots hold (-inf, -1) and sort last.
// The last slot is the row's threshold: a candidate enters only if it beats it,
// so a tile whose row max cannot beat it costs one compare per score. The list
// a row ends with does not depend on the order candidates arrive in, because
// `beats` is a strict total order on valid candidates.
#pragma once

#include <cstdint>

#include "refmatch/best.h"

namespace refmatch {

// Inserts (score, index), which must beat the last slot, keeping the list sorted;
// returns the new last slot (the row's next threshold) from registers: the entry
// itself, or the one it pushed down into the last slot. Read back, it would add a
// load after the stores, a round trip to global memory where the lists live there.
REFMATCH_HOST_DEVICE Best insert_sorted(float* scores, int64_t* indices, int k, float score, int64_t index) {
  Best last{score, index};
  int slot = k - 1;
  while (slot > 0) {
    const Best above{scores[slot - 1], indices[slot - 1]};
    if (!beats(score, index, above.score, above.index)) break;
    scores[slot] = above.score;
    indices[slot] = above.index;
    if (slot == k - 1) last = above;
    --slot;
  }
  scores[slot] = score;
  indices[slot] = index;
  return last;
}

}  // namespace refmatch
