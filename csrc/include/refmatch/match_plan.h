// Tile shape, shared-memory layout and launch plan of the fused CUDA match
// kernel. Host-callable (and device-callable where the kernel needs it), so the
// layout and planning arithmetic is unit-tested on the CPU through _C.
#pragma once

#include <cstdint>

#include "refmatch/best.h"

namespace refmatch {

// One tile shape for every dtype: a D chunk is always kChunkBytes of payload
// (64 halves or 32 floats), so the shared-memory layout is dtype-independent.
struct MatchTile {
  static constexpr int kBlockN = 128;    // query rows per CTA
  static constexpr int kBlockM = 64;     // reference rows per streamed tile
  static constexpr int kWarps = 4;       // warp w owns query rows [32 w, 32 w + 32)
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kMinCtasPerSm = 2;  // __launch_bounds__: caps registers at 255
  static constexpr int kWarpRows = kBlockN / kWarps;
  static constexpr int kStages = 3;      // cp.async pipeline depth (reference chunks)
  static constexpr int kChunkBytes = 128;
  // +16 bytes per row: the 8 rows an ldmatrix (or a 4-byte LDS of 8 rows)
  // touches then start in 8 distinct 16-byte bank groups.
  static constexpr int kRowBytes = kChunkBytes + 16;
  static constexpr int kUnitsPerRow = kChunkBytes / 16;  // 16-byte copy units
  static constexpr int kMinTilesPerSplit = 4;
};

enum class MatchMetric : int { kDot = 0, kCosine = 1, kL2 = 2 };
enum class MatchDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

REFMATCH_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Byte offsets inside the kernel's dynamic shared memory:
//   [row offsets: kBlockN int64] [query chunks] [stages: reference tile + ref stats]
// The query region holds every D chunk when the query is resident, else one
// chunk per pipeline stage (large D: re-read per reference tile).
struct MatchSmemLayout {
  int64_t query_offset;
  int64_t query_chunk_bytes;
  int64_t stage_offset;
  int64_t stage_bytes;
  int64_t stat_offset;  // inside a stage
  int64_t total_bytes;
};

REFMATCH_HOST_DEVICE MatchSmemLayout match_smem_layout(int64_t dim_chunks, bool query_resident) {
  using Tile = MatchTile;
  MatchSmemLayout layout{};
  layout.query_offset = Tile::kBlockN * static_cast<int64_t>(sizeof(int64_t));
  layout.query_chunk_bytes = int64_t{Tile::kBlockN} * Tile::kRowBytes;
  const int64_t query_chunks = query_resident ? dim_chunks : Tile::kStages;
  layout.stage_offset = layout.query_offset + query_chunks * layout.query_chunk_bytes;
  layout.stat_offset = int64_t{Tile::kBlockM} * Tile::kRowBytes;
  layout.stage_bytes = layout.stat_offset + Tile::kBlockM * static_cast<int64_t>(sizeof(float));
  layout.total_bytes = layout.stage_offset + Tile::kStages * layout.stage_bytes;
  return layout;
}

inline int64_t match_dim_chunks(int64_t dim, int element_bytes) {
  return ceil_div(dim * element_bytes, MatchTile::kChunkBytes);
}

// Keep the whole query tile in shared memory when it fits next to the stages.
inline bool match_query_resident(int64_t dim_chunks, int64_t smem_limit_bytes) {
  return match_smem_layout(dim_chunks, true).total_bytes <= smem_limit_bytes;
}

// Widest cp.async (16, 8 or 4 bytes) that every reference row chunk allows, or
// 0 for plain element loads (stride in D not 1, or rows only 2-byte aligned).
inline int reference_copy_bytes(uint64_t address, int64_t stride_m, int64_t stride_d,
                                int element_bytes) {
  if (stride_d != 1) return 0;
  const uint64_t bits = address | static_cast<uint64_t>(stride_m * element_bytes);
  for (int bytes = 16; bytes >= 4; bytes /= 2) {
    if (bits % bytes == 0) return bytes;
  }
  return 0;
}

// References per split, a whole number of `block_m`-row tiles. A split count
// that plan_match_splits did not produce may leave trailing splits empty.
inline int64_t match_refs_per_split(int64_t num_refs, int64_t splits, int64_t block_m = MatchTile::kBlockM) {
  return ceil_div(ceil_div(num_refs, splits), block_m) * block_m;
}

// Bank ranges per row block of `block_n` query rows: enough CTAs to fill
// `resident_ctas` slots when N alone cannot, but each range keeps at least
// kMinTilesPerSplit tiles of `block_m` rows (the kernel's tile sizes; the Hopper
// kernel's tiles are 128 or 256 query rows by 128 references).
inline int64_t plan_match_splits(int64_t num_rows, int64_t num_refs, int64_t resident_ctas,
                                 int64_t block_m = MatchTile::kBlockM, int64_t block_n = MatchTile::kBlockN) {
  const int64_t row_blocks = ceil_div(num_rows > 0 ? num_rows : 1, block_n);
  if (row_blocks >= resident_ctas) return 1;
  const int64_t wanted = ceil_div(resident_ctas, row_blocks);
  const int64_t most = ceil_div(num_refs, int64_t{MatchTile::kMinTilesPerSplit} * block_m);
  const int64_t splits = wanted < most ? wanted : most;
  if (splits <= 1) return 1;
  return ceil_div(num_refs, match_refs_per_split(num_refs, splits, block_m));  // drop empty ranges
}

}  // namespace refmatch
