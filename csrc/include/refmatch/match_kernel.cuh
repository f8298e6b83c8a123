// Fused similarity argmax (`match`, k = 1) on tensor cores, sm_80+.
//
// Algorithm
//   Query-stationary streaming argmax. A CTA owns kBlockN = 128 query rows and
//   walks its share of the bank in kBlockM = 64-row reference tiles. Per tile it
//   computes S = Q R^T with mma.sync into float32 accumulators, applies the
//   metric (cosine: times 1/|r|; l2: 2 q.r - |r|^2; dot: as is), masks padding
//   (last tile only), takes each row's max with fmaxf (which skips NaN: one
//   instruction per score in a full dot tile) and, only when some row of the warp
//   can beat its running best, locates the lowest column holding the max and
//   offers it (refmatch::beats / offer). Scores never leave registers.
//
// Tiling
//   4 warps; warp w owns query rows [32 w, 32 w + 32) against all 64 columns of
//   a tile (2 x 8 m16n8 atoms, 64 float accumulators per thread), so row maxima
//   need only quad shuffles. D is walked in 128-byte chunks (64 halves or 32
//   floats) through a kStages = 3 cp.async pipeline of (tile, chunk) steps. The
//   query tile is loaded once and stays in shared memory when all its chunks fit
//   next to the stages (D <= 704 halves / 352 floats on H100, 448 / 224 on
//   A100); otherwise each step also re-loads its query chunk. Shared rows carry 16 pad bytes: conflict-free
//   ldmatrix / LDS. The grid is (cdiv(N, 128), splits); split s scans bank rows
//   [s R, s R + R) (or the given split_starts ranges) and writes partial bests
//   [splits, N] for merge_splits_kernel.
//
// Precision
//   fp16 / bf16: m16n8k16. fp32: TF32 m16n8k8 when allowed, else 3xTF32.
//
// Semantics and limits
//   Ties go to the lowest reference index (strict order inside a split, lowest
//   column inside a tile, lowest split in the merge). NaN and -inf never win;
//   such rows keep index -1. Queries are read through [B, D, H, W] element
//   strides with plain loads; reference rows need unit stride in D and 4-byte
//   aligned rows for cp.async, other layouts take slower element loads. All
//   offsets are 64-bit. k = 1 only (the class-wise max runs it over class-aligned
//   split ranges, refmatch/backends/cuda_classwise.py).
#pragma once

#include <cstdint>

#include "refmatch/best.h"
#include "refmatch/match_loads.cuh"
#include "refmatch/match_plan.h"

namespace refmatch::detail {

using Tile = MatchTile;
constexpr int kAtomsM = Tile::kWarpRows / 16;  // m16 atoms per warp
constexpr int kAtomsN = Tile::kBlockM / 8;     // n8 atoms per tile
using Accumulators = float[kAtomsM][kAtomsN][4];
using RowBests = Best[kAtomsM][2];          // rows lane/4 and lane/4 + 8 of each atom

// acc += Q[warp rows, chunk] . R[tile rows, chunk]^T
template <class Mma>
__device__ __forceinline__ void multiply_chunk(Accumulators& acc, const char* query_tile,
                                               const char* ref_tile, int warp_row0, int lane) {
  constexpr int kSteps = Tile::kChunkBytes / sizeof(typename Mma::Storage) / Mma::kK;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const int k0 = step * Mma::kK;
    typename Mma::A a[kAtomsM];
#pragma unroll
    for (int i = 0; i < kAtomsM; ++i) a[i] = Mma::load_a(query_tile, warp_row0 + 16 * i, k0, lane);
#pragma unroll
    for (int pair = 0; pair < kAtomsN / 2; ++pair) {
      typename Mma::B b[2];
      Mma::load_b_pair(b, ref_tile, 16 * pair, k0, lane);
#pragma unroll
      for (int i = 0; i < kAtomsM; ++i) {
        Mma::mma(acc[i][2 * pair], a[i], b[0]);
        Mma::mma(acc[i][2 * pair + 1], a[i], b[1]);
      }
    }
  }
}

// Folds one finished tile (bank rows m0 .. m0 + 8 kN - 1) into the running
// bests. The accumulators are m16n8 fragments, as mma.sync and wgmma both leave
// them: element e of atom [i][j] is row 16 i + lane/4 + 8 (e/2), column
// 8 j + 2 (lane%4) + e%2, so a row lives in one quad of lanes.
template <int kM, int kN>
__device__ __forceinline__ void fold_tile(float (&acc)[kM][kN][4], Best (&best)[kM][2], const float* stats,
                                          int metric, int64_t m0, int64_t m_end, int lane) {
  constexpr int kCols = 8 * kN;
  const int quad_lane = lane & 3;
  // Oriented scores: one uniform branch per tile, then one instruction per score.
  if (metric != static_cast<int>(MatchMetric::kDot)) {
    const bool cosine = metric == static_cast<int>(MatchMetric::kCosine);
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const float2 stat = *reinterpret_cast<const float2*>(stats + 8 * j + 2 * quad_lane);
#pragma unroll
      for (int i = 0; i < kM; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float term = e % 2 ? stat.y : stat.x;
          acc[i][j][e] = cosine ? acc[i][j][e] * term : fmaf(2.f, acc[i][j][e], -term);
        }
    }
  }
  // Padding past the bank never wins; only the last tile has any.
  if (m_end - m0 < kCols) {
    const int valid_cols = static_cast<int>(m_end - m0);
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int i = 0; i < kM; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (8 * j + 2 * quad_lane + e % 2 >= valid_cols) acc[i][j][e] = -INFINITY;
  }
  // NaN needs no pass: fmaxf returns the other operand, and NaN equals no row max.
  float tile_max[kM][2];
  bool may_improve = false;
#pragma unroll
  for (int i = 0; i < kM; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float row_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kN; ++j) row_max = fmaxf(row_max, fmaxf(acc[i][j][2 * h], acc[i][j][2 * h + 1]));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
      row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
      tile_max[i][h] = row_max;
      // m0 is the lowest index in the tile: a necessary condition to win.
      may_improve |= beats(row_max, m0, best[i][h].score, best[i][h].index);
    }
  }
  // Locating is rare once the running bests are good; warp-uniform for the shuffles.
  if (!__any_sync(0xffffffffu, may_improve)) return;
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
      lowest = min(lowest, __shfl_xor_sync(0xffffffffu, lowest, 1));
      lowest = min(lowest, __shfl_xor_sync(0xffffffffu, lowest, 2));
      if (lowest < kCols) offer(best[i][h], tile_max[i][h], m0 + lowest);
    }
  }
}

template <class Mma>
__global__ void __launch_bounds__(MatchTile::kThreads, MatchTile::kMinCtasPerSm)
    match_argmax_kernel(const MatchParams p) {
  using Storage = typename Mma::Storage;
  extern __shared__ __align__(128) char smem[];
  const MatchSmemLayout layout = match_smem_layout(p.dim_chunks, p.query_resident);
  int64_t* row_offsets = reinterpret_cast<int64_t*>(smem);
  char* query_tiles = smem + layout.query_offset;
  char* stages = smem + layout.stage_offset;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = int64_t{blockIdx.x} * Tile::kBlockN;

  for (int r = threadIdx.x; r < Tile::kBlockN; r += Tile::kThreads) {
    const int64_t row = row0 + r, pixel = row % p.pixels_per_image;
    row_offsets[r] = row < p.num_rows ? row / p.pixels_per_image * p.stride_qb +
                                            pixel / p.width * p.stride_qh + pixel % p.width * p.stride_qw
                                      : -1;
  }
  __syncthreads();
  if (p.query_resident) {
    for (int64_t c = 0; c < p.dim_chunks; ++c) {
      load_query_chunk<Storage>(query_tiles + c * layout.query_chunk_bytes, p, row_offsets, c);
    }
  }

  const BankRange range = split_range(p);
  const int64_t m_begin = range.begin, m_end = range.end;
  const int64_t steps = m_end > m_begin ? ceil_div(m_end - m_begin, Tile::kBlockM) * p.dim_chunks : 0;
  const bool with_stats = p.metric != static_cast<int>(MatchMetric::kDot);

  // Producer: issues (tile, chunk) steps kStages - 1 ahead of the consumer.
  int64_t load_m0 = m_begin, load_chunk = 0, loaded = 0;
  int load_stage = 0;
  auto load_next_step = [&]() {
    if (loaded < steps) {
      char* stage = stages + load_stage * layout.stage_bytes;
      load_reference_chunk<Storage>(stage, p, load_m0, m_end, load_chunk);
      if (!p.query_resident) {
        load_query_chunk<Storage>(query_tiles + load_stage * layout.query_chunk_bytes, p, row_offsets,
                                  load_chunk);
      }
      if (with_stats && load_chunk == p.dim_chunks - 1) {
        load_ref_stats(stage + layout.stat_offset, p, load_m0, m_end);
      }
      if (++load_chunk == p.dim_chunks) {
        load_chunk = 0;
        load_m0 += Tile::kBlockM;
      }
      ++loaded;
      load_stage = load_stage + 1 == Tile::kStages ? 0 : load_stage + 1;
    }
    cp_async_commit();  // empty groups too: the wait count below stays uniform
  };
#pragma unroll
  for (int s = 0; s < Tile::kStages - 1; ++s) load_next_step();

  RowBests best;
#pragma unroll
  for (int i = 0; i < kAtomsM; ++i) best[i][0] = best[i][1] = empty_best();
  Accumulators acc;
  int64_t chunk = 0, m0 = m_begin;
  int stage = 0;
  for (int64_t step = 0; step < steps; ++step) {
    cp_async_wait<Tile::kStages - 2>();
    // This step's stage has landed for all threads, and every warp is done
    // with the stage the producer refills next (consumed one step ago).
    __syncthreads();
    load_next_step();
    const char* ref_tile = stages + stage * layout.stage_bytes;
    const char* query_tile = query_tiles + (p.query_resident ? chunk : stage) * layout.query_chunk_bytes;
    if (chunk == 0) {
#pragma unroll
      for (int i = 0; i < kAtomsM; ++i)
#pragma unroll
        for (int j = 0; j < kAtomsN; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
    }
    multiply_chunk<Mma>(acc, query_tile, ref_tile, warp * Tile::kWarpRows, lane);
    if (++chunk == p.dim_chunks) {
      fold_tile(acc, best, reinterpret_cast<const float*>(ref_tile + layout.stat_offset), p.metric, m0,
                m_end, lane);
      chunk = 0;
      m0 += Tile::kBlockM;
    }
    stage = stage + 1 == Tile::kStages ? 0 : stage + 1;
  }

  if (lane % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kAtomsM; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = row0 + warp * Tile::kWarpRows + 16 * i + 8 * h + lane / 4;
        if (row < p.num_rows) {
          const int64_t out = int64_t{blockIdx.y} * p.num_rows + row;
          p.out_score[out] = best[i][h].score;
          p.out_index[out] = best[i][h].index;
        }
      }
    }
  }
}

// Folds partial bests [splits, N] over splits, lowest split first.
__global__ void merge_splits_kernel(const float* partial_score, const int64_t* partial_index,
                                    int64_t splits, int64_t num_rows, float* out_score,
                                    int64_t* out_index) {
  const int64_t row = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (row >= num_rows) return;
  Best best = empty_best();
  for (int64_t s = 0; s < splits; ++s) {
    best = merge(best, Best{partial_score[s * num_rows + row], partial_index[s * num_rows + row]});
  }
  out_score[row] = best.score;
  out_index[row] = best.index;
}

}  // namespace refmatch::detail
