// Loads of the Hopper match kernel (match_kernel_sm90.cuh): the query tile, read
// once through its strides, and the producer's pipeline steps of the bank, by
// cp.async from a producer warpgroup or by TMA from one producer thread.
#pragma once

#include <cstdint>

#include "refmatch/match_loads.cuh"
#include "refmatch/match_plan_sm90.h"
#include "refmatch/wgmma_sm90.cuh"

namespace refmatch::detail {

// The query tile (kBlockN rows), read once through its strides, and zeros past D
// in the stages holding the last chunk. Zeros past N and D in the query too.
template <int kBlockN>
__device__ __forceinline__ void load_query_and_padding(char* query_tiles, char* stages, const MatchParams& p,
                                                       const HopperSmemLayout& layout, int64_t row0) {
  using Tile = HopperTile;
  const uint16_t* query = static_cast<const uint16_t*>(p.query);
  const int units = static_cast<int>(p.dim_chunks) * Tile::kUnitsPerRow;
  for (int i = threadIdx.x; i < kBlockN * units; i += Tile::kThreads) {
    const int row = i / units, unit = i % units;
    const int64_t d0 = int64_t{unit} * 8, query_row = row0 + row;
    const int64_t pixel = query_row % p.pixels_per_image;
    const int64_t offset = query_row / p.pixels_per_image * p.stride_qb + pixel / p.width * p.stride_qh +
                           pixel % p.width * p.stride_qw;
    alignas(16) uint16_t values[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      values[e] = query_row < p.num_rows && d0 + e < p.dim ? query[offset + (d0 + e) * p.stride_qd] : 0;
    }
    char* chunk = query_tiles + unit / Tile::kUnitsPerRow * layout.query_chunk_bytes;
    *reinterpret_cast<uint4*>(chunk + swizzle128_offset(row, unit % Tile::kUnitsPerRow)) =
        *reinterpret_cast<const uint4*>(values);
  }
  // A stale Inf past D times the query's zero there would make a score NaN (TMA
  // writes the zeros itself).
  if (p.tma_loads) return;
  const int64_t filled_units = (p.dim - (p.dim_chunks - 1) * Tile::kChunkElements) / 8;
  for (int i = threadIdx.x; i < layout.stages * Tile::kBlockM * Tile::kUnitsPerRow; i += Tile::kThreads) {
    const int64_t stage = i / (Tile::kBlockM * Tile::kUnitsPerRow), row = i / Tile::kUnitsPerRow % Tile::kBlockM;
    const int unit = i % Tile::kUnitsPerRow;
    if (stage % p.dim_chunks == p.dim_chunks - 1 && unit >= filled_units) {
      *reinterpret_cast<uint4*>(stages + stage * layout.stage_bytes + swizzle128_offset(row, unit)) =
          make_uint4(0, 0, 0, 0);
    }
  }
}

// Producer: step `step` (chunk step % dim_chunks of tile step / dim_chunks) into
// its stage. Rows past the bank keep stale data; their columns are masked.
__device__ __forceinline__ void load_step(char* stage, const MatchParams& p, const HopperSmemLayout& layout,
                                          int64_t step, int64_t m_begin, int64_t m_end, int thread) {
  using Tile = HopperTile;
  const int64_t tile = step / p.dim_chunks, chunk = step % p.dim_chunks;
  const int64_t m0 = m_begin + tile * Tile::kBlockM;
  const char* reference = static_cast<const char*>(p.reference);
  for (int i = thread; i < Tile::kBlockM * Tile::kUnitsPerRow; i += Tile::kProducerThreads) {
    const int row = i / Tile::kUnitsPerRow, unit = i % Tile::kUnitsPerRow;
    const int64_t d0 = chunk * Tile::kChunkElements + unit * 8;
    if (m0 + row < m_end && d0 < p.dim) {
      cp_async_zfill<16>(stage + swizzle128_offset(row, unit), reference + ((m0 + row) * p.stride_rm + d0) * 2, 16);
    }
  }
  if (p.metric != static_cast<int>(MatchMetric::kDot) && chunk + 1 == p.dim_chunks) {
    for (int i = thread; i < Tile::kBlockM; i += Tile::kProducerThreads) {
      const bool inside = m0 + i < m_end;
      const float* src = inside ? p.ref_stat + m0 + i : p.ref_stat;
      cp_async_zfill<4>(stage + layout.stat_offset + 4 * i, reinterpret_cast<const char*>(src), inside ? 4 : 0);
    }
  }
}

// Producer with TMA, one thread: each step is one box of the bank (and of ref_stat
// beside a tile's last chunk) into its stage, counted in bytes on the stage's `full`
// barrier. Boxes are whole: rows past the bank and columns past D arrive as zeros. The
// terms' box starts 16-byte aligned, hopper_stat_lead rows before the tile (class ranges
// start anywhere).
__device__ __forceinline__ void load_steps_with_tma(char* stages, uint64_t* full, uint64_t* empty, const MatchParams& p,
                                                    const HopperSmemLayout& layout, int64_t m_begin, int64_t tiles) {
  using Tile = HopperTile;
  const bool loads = !(p.ablate & kAblateLoads);
  const bool with_stats = p.metric != static_cast<int>(MatchMetric::kDot);
  wgmma::prefetch_tensor_map(&p.reference_map);
  if (with_stats) wgmma::prefetch_tensor_map(&p.stat_map);
  for (int64_t step = 0; step < tiles * p.dim_chunks; ++step) {
    const int64_t stage = step % layout.stages, round = step / layout.stages;
    const int64_t tile = step / p.dim_chunks, chunk = step % p.dim_chunks;
    const int m0 = static_cast<int>(m_begin + tile * Tile::kBlockM);  // hopper_tma_eligible: M < 2^31
    const bool stats = with_stats && chunk + 1 == p.dim_chunks;
    if (round > 0) wgmma::barrier_wait(empty + stage, static_cast<int>((round - 1) & 1));
    char* destination = stages + stage * layout.stage_bytes;
    wgmma::barrier_arrive_expect_bytes(full + stage,
                                       loads ? Tile::kTileChunkBytes + (stats ? Tile::kStatBoxRows * 4 : 0) : 0);
    if (!loads) continue;
    wgmma::tma_load(destination, &p.reference_map, static_cast<int>(chunk * Tile::kChunkElements), m0,
                    full + stage);
    if (stats) {
      wgmma::tma_load(destination + layout.stat_offset, &p.stat_map, m0 - hopper_stat_lead(m0), full + stage);
    }
  }
}

}  // namespace refmatch::detail
