// Global -> shared loads of the match kernel: reference chunks through cp.async
// (16, 8 or 4 bytes wide, zero-filled past the end of D and of the bank), the
// query through plain strided loads (any [B, D, H, W] strides), and the
// per-reference metric terms. Every load fills whole 16-byte units of a
// shared-memory row of MatchTile::kRowBytes.
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstdint>

#include "refmatch/match_plan.h"
#include "refmatch/mma_fragments.cuh"

namespace refmatch::detail {

// Everything the kernel reads; strides are in elements, offsets 64-bit.
struct MatchParams {
  const void* query;
  const void* reference;
  const float* ref_stat;
  const int64_t* split_starts;  // [gridDim.y + 1] bank ranges (class-wise), or null: even splits
  float* out_score;    // [gridDim.y, num_rows, slots]
  int64_t* out_index;  // [gridDim.y, num_rows, slots]
  int64_t num_rows, pixels_per_image, width, dim, num_refs, refs_per_split, dim_chunks;
  int64_t stride_qb, stride_qd, stride_qh, stride_qw, stride_rm, stride_rd;
  int metric;           // MatchMetric
  int slots;            // k: 1 (running best) or the top-k list length
  int ref_copy_bytes;   // reference_copy_bytes(): 16, 8, 4, or 0 for element loads
  bool query_resident;  // all D chunks of the query tile stay in shared memory
  // The wgmma kernel loads the bank through TMA (hopper_tma.cu): reference_map cuts it
  // into 128-row x 64-element boxes in the 128B swizzle, stat_map ref_stat into 128s.
  bool tma_loads;
  int ablate;  // HopperAblation bits, diagnostics only (the wgmma kernel); 0 otherwise
  // The wgmma kernel's top-k lists live in shared memory (HopperSmemLayout::list_offset)
  // and go to out_score / out_index at the end; false: in out_score / out_index throughout.
  bool shared_lists;
  CUtensorMap reference_map, stat_map;
};

// Bank rows [begin, end) of this CTA's split: refs_per_split rows each, or the
// given ranges (class-aligned for the class-wise max).
struct BankRange {
  int64_t begin, end;
};

__device__ __forceinline__ BankRange split_range(const MatchParams& p) {
  if (p.split_starts != nullptr) {  // clamped into the bank: a bad range reads nothing outside it
    const int64_t begin = max(int64_t{0}, min(p.split_starts[blockIdx.y], p.num_refs));
    return {begin, max(begin, min(p.split_starts[blockIdx.y + 1], p.num_refs))};
  }
  const int64_t begin = int64_t{blockIdx.y} * p.refs_per_split;
  return {begin, min(begin + p.refs_per_split, p.num_refs)};
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Copies src_bytes (<= kBytes) and zero-fills the rest of the kBytes at dst.
template <int kBytes>
__device__ __forceinline__ void cp_async_zfill(char* dst, const char* src, int src_bytes) {
  const uint32_t address = mma::shared_address(dst);
  if constexpr (kBytes == 16) {  // .cg: the bank streams through L2 only
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src),
                 "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(address), "l"(src),
                 "n"(kBytes), "r"(src_bytes) : "memory");
  }
}

// One 16-byte unit holding `valid` source bytes, copied kBytes at a time.
template <int kBytes>
__device__ __forceinline__ void copy_unit(char* dst, const char* src, int valid) {
#pragma unroll
  for (int offset = 0; offset < 16; offset += kBytes) {
    const int bytes = min(max(valid - offset, 0), kBytes);
    cp_async_zfill<kBytes>(dst + offset, bytes > 0 ? src + offset : src, bytes);
  }
}

// One 16-byte unit from `count` elements `stride` apart; the rest zero.
template <class Storage>
__device__ __forceinline__ void load_unit_elements(char* dst, const Storage* src, int64_t stride,
                                                   int count) {
  constexpr int kPerUnit = 16 / sizeof(Storage);
  Storage* out = reinterpret_cast<Storage*>(dst);
#pragma unroll
  for (int e = 0; e < kPerUnit; ++e) out[e] = e < count ? src[e * stride] : Storage(0);
}

template <class Storage>
__device__ __forceinline__ int elements_left(int64_t dim, int64_t d0) {
  constexpr int64_t kPerUnit = 16 / sizeof(Storage);
  const int64_t left = dim - d0;
  return static_cast<int>(left < 0 ? 0 : (left < kPerUnit ? left : kPerUnit));
}

// Reference rows [m0, m0 + kBlockM) x D chunk `chunk` into `tile`; rows at or
// past m_end are zeros. Eight consecutive threads cover one 128-byte row chunk.
template <class Storage>
__device__ __forceinline__ void load_reference_chunk(char* tile, const MatchParams& p, int64_t m0,
                                                     int64_t m_end, int64_t chunk) {
  using Tile = MatchTile;
  constexpr int kPerUnit = 16 / sizeof(Storage);
  const Storage* reference = static_cast<const Storage*>(p.reference);
  for (int unit = threadIdx.x; unit < Tile::kBlockM * Tile::kUnitsPerRow; unit += Tile::kThreads) {
    const int row = unit / Tile::kUnitsPerRow, column = unit % Tile::kUnitsPerRow;
    const int64_t d0 = chunk * (Tile::kChunkBytes / sizeof(Storage)) + column * kPerUnit;
    const int count = m0 + row < m_end ? elements_left<Storage>(p.dim, d0) : 0;
    const Storage* src = count > 0 ? reference + (m0 + row) * p.stride_rm + d0 * p.stride_rd : reference;
    char* dst = tile + row * Tile::kRowBytes + column * 16;
    const int valid = count * static_cast<int>(sizeof(Storage));
    const char* bytes = reinterpret_cast<const char*>(src);
    switch (p.ref_copy_bytes) {
      case 16: copy_unit<16>(dst, bytes, valid); break;
      case 8: copy_unit<8>(dst, bytes, valid); break;
      case 4: copy_unit<4>(dst, bytes, valid); break;
      default: load_unit_elements(dst, src, p.stride_rd, count); break;
    }
  }
}

// Query rows of this CTA x D chunk `chunk` into `tile`; row_offsets[r] < 0
// marks rows past N (zeros). Neighbouring threads take neighbouring addresses:
// along D when D has unit stride, else along rows (pixels of NCHW maps).
template <class Storage>
__device__ __forceinline__ void load_query_chunk(char* tile, const MatchParams& p,
                                                 const int64_t* row_offsets, int64_t chunk) {
  using Tile = MatchTile;
  constexpr int kPerUnit = 16 / sizeof(Storage);
  const Storage* query = static_cast<const Storage*>(p.query);
  const bool along_d = p.stride_qd == 1;
  for (int unit = threadIdx.x; unit < Tile::kBlockN * Tile::kUnitsPerRow; unit += Tile::kThreads) {
    const int row = along_d ? unit / Tile::kUnitsPerRow : unit % Tile::kBlockN;
    const int column = along_d ? unit % Tile::kUnitsPerRow : unit / Tile::kBlockN;
    const int64_t d0 = chunk * (Tile::kChunkBytes / sizeof(Storage)) + column * kPerUnit;
    const int64_t offset = row_offsets[row];
    const int count = offset >= 0 ? elements_left<Storage>(p.dim, d0) : 0;
    const Storage* src = count > 0 ? query + offset + d0 * p.stride_qd : query;
    load_unit_elements(tile + row * Tile::kRowBytes + column * 16, src, p.stride_qd, count);
  }
}

// ref_stat[m0, m0 + kBlockM) into `stats` (zeros past m_end).
__device__ __forceinline__ void load_ref_stats(char* stats, const MatchParams& p, int64_t m0,
                                               int64_t m_end) {
  for (int i = threadIdx.x; i < MatchTile::kBlockM; i += MatchTile::kThreads) {
    const bool inside = m0 + i < m_end;
    const float* src = inside ? p.ref_stat + m0 + i : p.ref_stat;
    cp_async_zfill<4>(stats + 4 * i, reinterpret_cast<const char*>(src), inside ? 4 : 0);
  }
}

}  // namespace refmatch::detail
