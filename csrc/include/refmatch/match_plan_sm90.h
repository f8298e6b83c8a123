// Tile shape, shared-memory layout and eligibility of the Hopper (sm_90a) match
// kernel, match_kernel_sm90.cuh. Host-callable, so the arithmetic is unit-tested
// on the CPU through _C like match_plan.h.
#pragma once

#include <cstdint>

#include "refmatch/match_plan.h"

namespace refmatch {

struct HopperTile {
  static constexpr int kRowBlockRows = 64;   // query rows per wgmma (its M); a consumer owns 1 or 2 blocks
  static constexpr int kConsumers = 2;
  static constexpr int kMaxRowBlocks = 2;
  static constexpr int kBlockM = 128;        // reference rows per tile: the wgmma N
  static constexpr int kThreads = 384;       // a producer warpgroup and two consumer warpgroups
  static constexpr int kProducerThreads = 128;
  static constexpr int kConsumerThreads = 256;
  static constexpr int kChunkBytes = 128;    // one D chunk: 64 halves, one 128-byte swizzle row
  static constexpr int kChunkElements = 64;
  static constexpr int kUnitsPerRow = 8;     // 16-byte units per chunk row
  static constexpr int kAtomBytes = 1024;    // 8 rows x 128 B: one 128B-swizzle atom
  static constexpr int kTileChunkBytes = kBlockM * kChunkBytes;  // one pipeline step
  static constexpr int kMaxStages = 8;
  static constexpr int kMaxDim = 256;        // the query tile stays resident
  static constexpr int kMaxChunks = kMaxDim / kChunkElements;
  // TMA boxes start at 16-byte aligned addresses (a box at an unaligned float is an illegal
  // instruction), so the metric terms' box starts up to 3 rows early: 4 rows more.
  static constexpr int kStatBoxRows = kBlockM + 4;
};

// Stages the wgmma kernel leaves out for timing by difference (MatchParams::ablate,
// bench/ablate_wgmma.py): the producer's bank loads, the consumers' epilogue.
enum HopperAblation : int { kAblateLoads = 1, kAblateEpilogue = 2, kAblateAll = 3 };

// Query rows per CTA with `row_blocks` 64-row blocks per consumer warpgroup: 128 or 256.
constexpr REFMATCH_HOST_DEVICE int64_t hopper_block_n(int row_blocks) {
  return int64_t{HopperTile::kConsumers} * HopperTile::kRowBlockRows * row_blocks;
}

// Byte offsets from the 1024-aligned start of dynamic shared memory:
//   [query: dim_chunks x block_n rows x 128 B] [stages x (reference chunk, 132 stats)]
//   [full and empty mbarriers, one each per stage] [top-k lists, where they live here:
//   scores float [block_n, slots], then indices int64 [block_n, slots]]
struct HopperSmemLayout {
  int64_t stages;       // a multiple of dim_chunks: a stage always holds the same chunk
  int64_t query_chunk_bytes;
  int64_t stage_offset;
  int64_t stage_bytes;
  int64_t stat_offset;  // inside a stage
  int64_t barrier_offset;
  int64_t list_offset;  // 0 bytes of lists unless list_slots > 0
  int64_t total_bytes;  // with the alignment slack
};

REFMATCH_HOST_DEVICE int64_t round_up(int64_t value, int64_t to) { return ceil_div(value, to) * to; }

// list_slots > 0: room for the CTA's top-k lists (k slots a row) after the barriers.
REFMATCH_HOST_DEVICE HopperSmemLayout hopper_smem_layout(int64_t dim_chunks, int row_blocks = 1,
                                                         int64_t list_slots = 0) {
  using Tile = HopperTile;
  HopperSmemLayout layout{};
  layout.stages = Tile::kMaxStages / dim_chunks * dim_chunks;
  layout.query_chunk_bytes = hopper_block_n(row_blocks) * Tile::kChunkBytes;
  layout.stage_offset = dim_chunks * layout.query_chunk_bytes;
  layout.stat_offset = Tile::kTileChunkBytes;
  layout.stage_bytes = round_up(layout.stat_offset + Tile::kStatBoxRows * int64_t{sizeof(float)}, Tile::kAtomBytes);
  layout.barrier_offset = layout.stage_offset + layout.stages * layout.stage_bytes;
  layout.list_offset = round_up(layout.barrier_offset + 2 * layout.stages * int64_t{sizeof(uint64_t)}, 16);
  const int64_t list_bytes = hopper_block_n(row_blocks) * list_slots * int64_t{sizeof(float) + sizeof(int64_t)};
  layout.total_bytes = Tile::kAtomBytes + layout.list_offset + list_bytes;
  return layout;
}

// Where a consumer's tile sits in the ring of stages: its dim_chunks steps take the
// consecutive stages from first(), all in one round (stages is a multiple of
// dim_chunks), so one barrier parity. Walked tile by tile: the consumer's loop takes
// no 64-bit division (an emulated one, about 20 instructions on its critical path),
// and one register (the RS top-k kernel at 256 rows spilled with two).
struct HopperTileStages {
  int position = 0;  // tile x dim_chunks, modulo two rounds of the ring

  REFMATCH_HOST_DEVICE int first(int stages) const { return position < stages ? position : position - stages; }
  REFMATCH_HOST_DEVICE int parity(int stages) const { return position < stages ? 0 : 1; }
  REFMATCH_HOST_DEVICE void next(int dim_chunks, int stages) {
    position += dim_chunks;
    if (position == 2 * stages) position = 0;
  }
};

// Rows between the TMA box of a tile's metric terms and the tile's first row m0: the box
// starts at m0 rounded down to 4 floats (16 bytes), so the tile's terms begin this far in.
constexpr REFMATCH_HOST_DEVICE int hopper_stat_lead(int64_t m0) { return static_cast<int>(m0 & 3); }

// Byte offset of 16-byte unit `unit` (0..7) of chunk row `row` in the 128B
// swizzle that wgmma reads: unit bits XOR the row's position in its 8-row atom.
REFMATCH_HOST_DEVICE int64_t swizzle128_offset(int64_t row, int unit) {
  return row * HopperTile::kChunkBytes + ((unit ^ static_cast<int>(row & 7)) << 4);
}

// Byte offset, in a swizzled query chunk, of the 16-byte row that lane `lane` hands to
// ldmatrix.x4 for the A fragment of k16 step `k` (0..3) of the 16 rows from `first_row`:
// lanes 0-15 give rows 0-15 at k 0-7 (fragment registers 0, 1), lanes 16-31 the same
// rows at k 8-15 (registers 2, 3), as mma.sync's and wgmma's A fragments expect.
REFMATCH_HOST_DEVICE int64_t query_fragment_offset(int64_t first_row, int lane, int k) {
  return swizzle128_offset(first_row + (lane & 15), 2 * k + (lane >> 4));
}

// The Hopper kernel takes fp16/bf16 with D <= 256 in whole 16-byte units and
// reference rows it can copy 16 bytes at a time; every other call runs the
// mma.sync kernel.
inline bool hopper_eligible(int64_t dim, int dtype, int ref_copy_bytes, int64_t smem_limit) {
  const bool half = dtype == static_cast<int>(MatchDtype::kFloat16) ||
                    dtype == static_cast<int>(MatchDtype::kBFloat16);
  if (!half || dim < 1 || dim > HopperTile::kMaxDim || dim % 8 != 0 || ref_copy_bytes != 16) return false;
  return hopper_smem_layout(match_dim_chunks(dim, 2)).total_bytes <= smem_limit;
}

// Whether an eligible call's producer can load through TMA (hopper_tma.cu): tensor
// maps need 16-byte aligned bases and row strides of at least a row (below 2^40
// bytes), and box coordinates are int32, so M < 2^31. ref_stat: 0 for dot.
inline bool hopper_tma_eligible(int64_t num_refs, int64_t dim, uint64_t reference, int64_t stride_m,
                                uint64_t ref_stat) {
  const int64_t row_bytes = stride_m * 2;
  return num_refs >= 1 && num_refs <= INT32_MAX && reference % 16 == 0 && ref_stat % 16 == 0 &&
         stride_m >= dim && row_bytes % 16 == 0 && row_bytes < (int64_t{1} << 40);
}

// D chunks of the query a consumer can hold in registers for the RS form of wgmma, 16
// per chunk and row block: all 4 (D <= 256) beside the 64 accumulators of 128 rows per
// CTA; 1 (D <= 64) beside the 128 of 256 rows (2 chunks spilled 312 bytes).
constexpr REFMATCH_HOST_DEVICE int hopper_register_chunks(int row_blocks) {
  return row_blocks == 1 ? HopperTile::kMaxChunks : 1;
}

inline bool hopper_query_fits_registers(int64_t dim, int row_blocks) {
  return match_dim_chunks(dim, 2) <= hopper_register_chunks(row_blocks);
}

// Whether a top-k call's lists (k slots a row) fit in shared memory beside the full
// pipeline, where they cost a few cycles an access instead of a global round trip:
// on an H100 or H200 (227 KB a block), k <= 19 at D <= 64, 8 at D <= 128, 9 at D <= 192
// with 256 rows, 17 at D = 256 (128 rows); test_cuda_build.py checks these limits.
inline bool hopper_lists_fit(int64_t dim, int row_blocks, int64_t k, int64_t smem_limit) {
  return hopper_smem_layout(match_dim_chunks(dim, 2), row_blocks, k).total_bytes <= smem_limit;
}

// Row blocks per consumer for an eligible call that asks for `wanted_rows` query rows
// per CTA (128 or 256): 256 halves the bank bytes each FLOP reads from L2, where its
// larger query tile fits beside the full pipeline (D <= 192 on an H100); else 128.
inline int hopper_row_blocks(int64_t dim, int64_t wanted_rows, int64_t smem_limit) {
  constexpr int kMost = HopperTile::kMaxRowBlocks;
  if (wanted_rows != hopper_block_n(kMost)) return 1;
  return hopper_smem_layout(match_dim_chunks(dim, 2), kMost).total_bytes <= smem_limit ? kMost : 1;
}

}  // namespace refmatch
