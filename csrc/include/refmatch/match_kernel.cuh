// Fused similarity argmax and top-k (`match`, k = 1 .. 64) on tensor cores, sm_80+.
//
// Algorithm
//   Query-stationary streaming reduction. A CTA owns kBlockN = 128 query rows
//   and walks its share of the bank in kBlockM = 64-row reference tiles. Per
//   tile it computes S = Q R^T with mma.sync into float32 accumulators and folds
//   the tile with an epilogue of match_epilogue.cuh: the metric (cosine: times
//   1/|r|; l2: 2 q.r - |r|^2; dot: as is), padding masked on the last tile, each
//   row's max with fmaxf (one instruction per score in a full dot tile), and
//   only when some row of the warp can improve: k = 1 locates the lowest column
//   holding the max and offers it (refmatch::beats / offer); top-k inserts the
//   scores that beat the row's threshold into its sorted list. Scores never
//   leave registers.
//
// Tiling
//   4 warps; warp w owns query rows [32 w, 32 w + 32) against all 64 columns of
//   a tile (2 x 8 m16n8 atoms, 64 float accumulators per thread), so row maxima
//   need only quad shuffles. D is walked in 128-byte chunks (64 halves or 32
//   floats) through a kStages = 3 cp.async pipeline of (tile, chunk) steps. The
//   query tile is loaded once and stays in shared memory when all its chunks fit
//   next to the stages (D <= 704 halves / 352 floats on H100, 448 / 224 on
//   A100); otherwise each step also re-loads its query chunk. Shared rows carry
//   16 pad bytes: conflict-free ldmatrix / LDS. The grid is (cdiv(N, 128),
//   splits); split s scans bank rows [s R, s R + R) (or the given split_starts
//   ranges) and writes partial results [splits, N, k]: bests for
//   merge_splits_kernel (k = 1), sorted lists that the caller merges (top-k).
//
// Precision
//   fp16 / bf16: m16n8k16. fp32: TF32 m16n8k8 when allowed, else 3xTF32.
//
// Semantics and limits
//   Ties go to the lowest reference index (strict order inside a split, lowest
//   column inside a tile, lowest split in the merge). NaN and -inf never win;
//   such rows keep index -1 (top-k: slots without a finite score). Queries are
//   read through [B, D, H, W] element strides with plain loads; reference rows
//   need unit stride in D and 4-byte aligned rows for cp.async, other layouts
//   take slower element loads. All offsets are 64-bit. The class-wise max runs
//   the k = 1 kernel over class-aligned split ranges (cuda_classwise.py).
#pragma once

#include <cstdint>

#include "refmatch/best.h"
#include "refmatch/match_epilogue.cuh"
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

template <class Mma, bool kTopK>
__global__ void __launch_bounds__(MatchTile::kThreads, MatchTile::kMinCtasPerSm)
    match_kernel(const MatchParams p) {
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

  // k = 1: the running bests. Top-k: each list's last slot, the lists (empty)
  // in this split's outputs [N, k], written by the rows' quads only.
  RowBests best;
#pragma unroll
  for (int i = 0; i < kAtomsM; ++i) best[i][0] = best[i][1] = empty_best();
  const int64_t first_row = row0 + warp * Tile::kWarpRows + lane / 4;
  float* list_scores = p.out_score + int64_t{blockIdx.y} * p.num_rows * p.slots;
  int64_t* list_indices = p.out_index + int64_t{blockIdx.y} * p.num_rows * p.slots;
  if constexpr (kTopK) init_topk_lists<16, kAtomsM>(list_scores, list_indices, first_row, p.num_rows, p.slots, lane);
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
      const float* stats = reinterpret_cast<const float*>(ref_tile + layout.stat_offset);
      if constexpr (kTopK) {
        fold_tile_topk<16>(acc, best, stats, p.metric, m0, m_end, lane, list_scores, list_indices, first_row,
                           p.num_rows, p.slots);
      } else {
        fold_tile(acc, best, stats, p.metric, m0, m_end, lane);
      }
      chunk = 0;
      m0 += Tile::kBlockM;
    }
    stage = stage + 1 == Tile::kStages ? 0 : stage + 1;
  }

  if (!kTopK && lane % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kAtomsM; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = first_row + 16 * i + 8 * h;
        if (row < p.num_rows) {
          list_scores[row] = best[i][h].score;
          list_indices[row] = best[i][h].index;
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
