// Fused similarity argmax and top-k (`match`, k = 1 .. 64) for Hopper, sm_90a:
// wgmma with a producer warpgroup and two ping-ponging consumer warpgroups.
//
// Variants (template parameters): 128 or 256 query rows per CTA, the query
// operand read from shared memory by every wgmma (SS) or held in registers
// (RS), and k = 1 or top-k.
//
// Algorithm
//   The streaming argmax of match_kernel.cuh on warpgroup MMAs. A CTA owns
//   128 or 256 query rows (kRowBlocks = 1 or 2 64-row blocks per consumer
//   warpgroup) and walks its share of the bank in kBlockM = 128-row tiles.
//   Consumer warpgroup w computes the (64 kRowBlocks) x 128 scores of its query
//   rows with m64n128k16 wgmmas from shared memory (one per row block, sharing
//   the reference tile) into float32 registers and folds them with the mma.sync
//   kernel's epilogues (fold_tile: metric, NaN and padding to -inf, row max,
//   locate only when a row can improve; top-k: fold_tile_topk, each row's
//   sorted list in this split's outputs [N, k], its last slot in registers). Each reference byte read from L2 does
//   128 FLOP per 128 query rows: 256 rows halve the L2 traffic per FLOP, at 128
//   accumulator registers per consumer thread. With kQueryInRegisters each
//   consumer loads its query rows once (ldmatrix from the swizzled tile, 4
//   registers per row block and k16 step; any D for 128 rows, D <= 64 for
//   256: hopper_register_chunks) and issues the RS wgmma, which reads
//   only the reference tile from shared memory: 4 KB per 64-cycle m64n128k16
//   instead of 6 KB of the 128 bytes per cycle an SM's shared memory delivers.
//
// Pipeline
//   D is cut into 64-element chunks stored in the 128B swizzle wgmma reads
//   (swizzle128_offset); the query tile stays in shared memory (D <= 256). A
//   step is one (tile, chunk) of the bank, 16 KB, plus the tile's 128 metric
//   terms beside its last chunk. The producer warpgroup copies steps with
//   cp.async into `stages` buffers (a multiple of the chunk count, so a stage
//   always holds the same chunk and the zeros past D stay put) and signals a
//   `full` mbarrier per stage; consumers release it through an `empty` one.
//   With tma_loads (the default where hopper_tma_eligible;
//   REFMATCH_CUDA_HOPPER_LOADS=cp.async turns it off) one producer thread issues
//   a TMA box load per step instead, counted in bytes on the `full` barrier: no
//   copy instructions or address arithmetic on the schedulers the consumers use,
//   and TMA writes the zeros past D and the bank. TMA boxes start 16-byte
//   aligned, so the box of metric terms starts up to 3 rows before a tile whose
//   range starts anywhere (class ranges; hopper_stat_lead).
//   The consumers take turns on the tensor cores (two named barriers, as in
//   CUTLASS's ping-pong kernels): a turn is issuing one tile's wgmmas; then the
//   other consumer issues while this one waits for its MMAs and runs its
//   epilogue, so MMA and epilogue overlap across warpgroups. Stages are
//   released after the tile's MMAs have completed, the last one after the
//   epilogue has read its metric terms. A tile's steps lie in one round of the
//   ring, so consumers walk it tile by tile (HopperTileStages), not dividing.
//
// Ablation (p.ablate, diagnostics only: results are meaningless)
//   Bits of HopperAblation leave out the bank loads or the epilogue, so that
//   timing differences place the kernel's time without hardware counters
//   (bench/ablate_wgmma.py). Not the MMAs: a wgmma group that may be empty
//   makes ptxas add a dummy wgmma to every group.
//
// Semantics and limits
//   As the mma.sync kernel: ties to the lowest index, NaN never wins, rows
//   without a finite score keep -1, splits merged by merge_splits_kernel (k = 1;
//   the caller merges top-k lists), 64-bit
//   offsets, queries read through their strides. fp16 / bf16 only, D <= 256 in
//   whole 16-byte units, reference rows 16-byte aligned with unit stride in D
//   (hopper_eligible); other calls take the mma.sync kernel. 256 rows per CTA
//   only where that query tile fits beside the full pipeline (hopper_row_blocks:
//   kMaxStages steps, rounded to whole tiles; D <= 192 on H100 / H200).
#pragma once

#include <cstdint>

#include "refmatch/match_kernel.cuh"
#include "refmatch/match_loads_sm90.cuh"
#include "refmatch/match_plan_sm90.h"
#include "refmatch/wgmma_sm90.cuh"

namespace refmatch::detail {

template <int kRowBlocks>
using HopperAccumulators = float[kRowBlocks][HopperTile::kBlockM / 8][4];
constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;  // 128 x 40 + 256 x 232 <= 65536

// Consumer: its query rows (row blocks of 64) of chunk `chunk`, k16 step `k`, as the
// A fragments of the RS wgmma: ldmatrix.x4 of each warp's 16 x 16 block from the
// swizzled tile (lanes 0-15: rows, k 0-7; lanes 16-31: rows, k 8-15).
template <int kRowBlocks, int kChunks>
__device__ __forceinline__ void load_query_fragments(uint32_t (&fragments)[kRowBlocks][kChunks][4][4],
                                                     const char* query_tiles, const HopperSmemLayout& layout,
                                                     int64_t dim_chunks, int first_row, int lane, int warp) {
#pragma unroll
  for (int chunk = 0; chunk < kChunks; ++chunk) {
    if (chunk >= dim_chunks) break;
#pragma unroll
    for (int i = 0; i < kRowBlocks; ++i)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int rows = first_row + i * HopperTile::kRowBlockRows + 16 * warp;
        mma::ldmatrix_x4(fragments[i][chunk][k],
                         query_tiles + chunk * layout.query_chunk_bytes + query_fragment_offset(rows, lane, k));
      }
  }
}

template <bool kBFloat16, int kRowBlocks, bool kQueryInRegisters, bool kTopK>
__global__ void __launch_bounds__(HopperTile::kThreads, 1) match_sm90_kernel(const __grid_constant__ MatchParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = HopperTile;
  constexpr int kBlockN = static_cast<int>(hopper_block_n(kRowBlocks));
  constexpr int kRowBlockBytes = Tile::kRowBlockRows * Tile::kChunkBytes;  // whole swizzle atoms
  // Chunks unrolled in the loop (a compile-time chunk indexes the query fragments).
  constexpr int kChunks = kQueryInRegisters ? hopper_register_chunks(kRowBlocks) : Tile::kMaxChunks;
  if (p.dim_chunks > kChunks) __trap();  // the host never plans it (hopper_query_fits_registers)
  extern __shared__ char smem_raw[];
  const uint32_t raw = mma::shared_address(smem_raw);
  char* smem = smem_raw + (round_up(raw, Tile::kAtomBytes) - raw);  // swizzle atoms are 1024-aligned
  const HopperSmemLayout layout = hopper_smem_layout(p.dim_chunks, kRowBlocks);
  char* query_tiles = smem;
  char* stages = smem + layout.stage_offset;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + layout.barrier_offset);
  uint64_t* empty = full + layout.stages;
  const int64_t row0 = int64_t{blockIdx.x} * kBlockN;
  load_query_and_padding<kBlockN>(query_tiles, stages, p, layout, row0);
  if (threadIdx.x == 0) {
    for (int s = 0; s < layout.stages; ++s) {
      wgmma::barrier_init(full + s, p.tma_loads ? 1 : Tile::kProducerThreads);
      wgmma::barrier_init(empty + s, Tile::kConsumerThreads);
    }
    wgmma::fence_barrier_init();
  }
  wgmma::fence_proxy_async();  // the query stores, before wgmma reads them
  __syncthreads();

  const BankRange range = split_range(p);
  const int64_t m_begin = range.begin, m_end = range.end;
  const int64_t tiles = m_end > m_begin ? ceil_div(m_end - m_begin, Tile::kBlockM) : 0;
  const int warpgroup = threadIdx.x / 128;

  if (warpgroup == 0) {  // producer
    wgmma::release_registers<kProducerRegisters>();
    if (p.tma_loads) {
      if (threadIdx.x == 0) load_steps_with_tma(stages, full, empty, p, layout, m_begin, tiles);
      return;
    }
    for (int64_t step = 0; step < tiles * p.dim_chunks; ++step) {
      const int64_t stage = step % layout.stages, round = step / layout.stages;
      if (round > 0) wgmma::barrier_wait(empty + stage, static_cast<int>((round - 1) & 1));
      if (!(p.ablate & kAblateLoads)) {
        load_step(stages + stage * layout.stage_bytes, p, layout, step, m_begin, m_end, threadIdx.x);
      }
      wgmma::barrier_arrive_after_copies(full + stage);
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");  // no copy outlives its thread
    return;
  }

  wgmma::claim_registers<kConsumerRegisters>();
  const int consumer = warpgroup - 1, lane = threadIdx.x % 32, warp_in_group = threadIdx.x / 32 % 4;
  const int my_turn = 1 + consumer, other_turn = 2 - consumer;  // named barriers 1 and 2
  const char* query_rows = query_tiles + consumer * kRowBlocks * kRowBlockBytes;
  uint32_t query_fragments[kRowBlocks][kQueryInRegisters ? kChunks : 1][4][4];
  if constexpr (kQueryInRegisters) {
    load_query_fragments(query_fragments, query_tiles, layout, p.dim_chunks,
                         consumer * kRowBlocks * Tile::kRowBlockRows, lane, warp_in_group);
  }
  // k = 1: the running bests. Top-k: each list's last slot, the lists (empty) in this
  // split's outputs [N, k] or, with shared_lists, in shared memory [block_n, k] (rows
  // counted from row0) until the end; a warp's rows are first_row + 64 i (+ 8), as wgmma
  // leaves them.
  Best best[kRowBlocks][2];
#pragma unroll
  for (int i = 0; i < kRowBlocks; ++i) best[i][0] = best[i][1] = empty_best();
  const int64_t first_row = row0 + consumer * kRowBlocks * Tile::kRowBlockRows + 16 * warp_in_group + lane / 4;
  float* out_scores = p.out_score + int64_t{blockIdx.y} * p.num_rows * p.slots;
  int64_t* out_indices = p.out_index + int64_t{blockIdx.y} * p.num_rows * p.slots;
  float* list_scores = out_scores;
  int64_t* list_indices = out_indices;
  int64_t list_first_row = first_row, list_rows = p.num_rows;
  if (kTopK && p.shared_lists) {
    list_scores = reinterpret_cast<float*>(smem + layout.list_offset);
    list_indices = reinterpret_cast<int64_t*>(smem + layout.list_offset + kBlockN * p.slots * sizeof(float));
    list_first_row = first_row - row0;
    list_rows = min(int64_t{kBlockN}, p.num_rows - row0);
  }
  if constexpr (kTopK) {
    init_topk_lists<Tile::kRowBlockRows, kRowBlocks>(list_scores, list_indices, list_first_row, list_rows, p.slots,
                                                     lane);
  }
  HopperAccumulators<kRowBlocks> acc;
  HopperTileStages tile_stages;  // of the tile at hand; every consumer walks every tile
  const int ring_stages = static_cast<int>(layout.stages);
  for (int64_t m0 = m_begin; m0 < m_end; m0 += Tile::kBlockM) {  // m0: the tile's first bank row
    // Consumer 0 goes first; afterwards each waits for the other's wgmmas to be issued.
    if (consumer == 1 || m0 > m_begin) wgmma::named_sync(my_turn, Tile::kConsumerThreads);
    const int first_stage = tile_stages.first(ring_stages);
#pragma unroll
    for (int chunk = 0; chunk < kChunks; ++chunk) {
      if (chunk >= p.dim_chunks) break;
      const int stage = first_stage + chunk;
      wgmma::barrier_wait(full + stage, tile_stages.parity(ring_stages));
      if (!p.tma_loads) wgmma::fence_proxy_async();  // the cp.async stores, before wgmma reads them
      const char* ref_chunk = stages + stage * layout.stage_bytes;
      const char* query_chunk = query_rows + chunk * layout.query_chunk_bytes;
      wgmma::pin(acc);
      wgmma::fence();
#pragma unroll
      for (int k = 0; k < Tile::kChunkBytes / 32; ++k) {
#pragma unroll
        for (int i = 0; i < kRowBlocks; ++i) {
          const uint64_t reference_k = wgmma::descriptor(ref_chunk + 32 * k);
          if constexpr (kQueryInRegisters) {
            wgmma::mma_m64n128k16<kBFloat16>(acc[i], query_fragments[i][chunk][k], reference_k, chunk > 0 || k > 0);
          } else {
            wgmma::mma_m64n128k16<kBFloat16>(acc[i], wgmma::descriptor(query_chunk + i * kRowBlockBytes + 32 * k),
                                             reference_k, chunk > 0 || k > 0);
          }
        }
      }
      wgmma::commit();
    }
    // The other consumer may issue its wgmmas; not after its last tile (nobody waits).
    if (consumer == 0 || m0 + Tile::kBlockM < m_end) wgmma::named_arrive(other_turn, Tile::kConsumerThreads);
    wgmma::wait<0>();
    wgmma::pin(acc);
    const int last_stage = first_stage + static_cast<int>(p.dim_chunks) - 1;
    for (int stage = first_stage; stage < last_stage; ++stage) wgmma::barrier_arrive(empty + stage);  // done with these
    const char* stats = stages + last_stage * layout.stage_bytes + layout.stat_offset +
                        (p.tma_loads ? 4 * hopper_stat_lead(m0) : 0);  // where the TMA box put row m0
    if (!(p.ablate & kAblateEpilogue)) {
      if constexpr (kTopK) {
        fold_tile_topk<Tile::kRowBlockRows>(acc, best, reinterpret_cast<const float*>(stats), p.metric, m0, m_end,
                                            lane, list_scores, list_indices, list_first_row, list_rows, p.slots);
      } else {
        fold_tile(acc, best, reinterpret_cast<const float*>(stats), p.metric, m0, m_end, lane);
      }
    }
    wgmma::barrier_arrive(empty + last_stage);  // after the epilogue read the stage's metric terms
    tile_stages.next(static_cast<int>(p.dim_chunks), ring_stages);
  }

  if (kTopK && p.shared_lists) {
    copy_topk_lists<Tile::kRowBlockRows, kRowBlocks>(list_scores, list_indices, out_scores, out_indices,
                                                     list_first_row, row0, list_rows, p.slots, lane);
  }
  if (!kTopK && lane % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kRowBlocks; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = first_row + i * Tile::kRowBlockRows + 8 * h;
        if (row < p.num_rows) {
          out_scores[row] = best[i][h].score;
          out_indices[row] = best[i][h].index;
        }
      }
  }
#else
  __trap();  // built without sm_90a: the host never launches it there
#endif
}

}  // namespace refmatch::detail
