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
// returns the new last slot (the row's next threshold).
REFMATCH_HOST_DEVICE Best insert_sorted(float* scores, int64_t* indices, int k, float score, int64_t index) {
  int slot = k - 1;
  while (slot > 0 && beats(score, index, scores[slot - 1], indices[slot - 1])) {
    scores[slot] = scores[slot - 1];
    indices[slot] = indices[slot - 1];
    --slot;
  }
  scores[slot] = score;
  indices[slot] = index;
  return Best{scores[k - 1], indices[k - 1]};
}

}  // namespace refmatch
