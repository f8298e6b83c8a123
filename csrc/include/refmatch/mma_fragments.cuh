// Tensor-core operands for mma.sync (sm_80+), one traits type per input
// precision. All of them share the m16n8 float32 accumulator layout (thread
// lane holds rows lane/4 and lane/4 + 8, columns 2 (lane%4) and 2 (lane%4) + 1),
// so the match kernel has a single code path over them.
//
// Operand tiles sit in shared memory as rows of MatchTile::kChunkBytes payload
// plus 16 pad bytes: A = query rows [row][k], B = reference rows [n][k], which
// is the "col" B layout mma.sync wants, so no transpose is needed.
#pragma once

#include <cstdint>

#include "refmatch/match_plan.h"

namespace refmatch::mma {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&regs)[4], const char* pointer) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3])
               : "r"(shared_address(pointer)));
}

// fp16 / bf16 inputs: m16n8k16, fragments straight from ldmatrix.
template <bool kBFloat16>
struct Mma16Bit {
  using Storage = uint16_t;
  static constexpr int kK = 16;
  struct A { uint32_t r[4]; };
  struct B { uint32_t r[2]; };

  // Rows row0..row0+15, columns k0..k0+15 (elements).
  static __device__ __forceinline__ A load_a(const char* tile, int row0, int k0, int lane) {
    const int row = row0 + (lane & 15), k = k0 + (lane >> 4) * 8;
    A a;
    ldmatrix_x4(a.r, tile + row * MatchTile::kRowBytes + k * 2);
    return a;
  }

  // Two n8 atoms: reference rows n0..n0+7 and n0+8..n0+15, columns k0..k0+15.
  static __device__ __forceinline__ void load_b_pair(B (&b)[2], const char* tile, int n0, int k0,
                                                     int lane) {
    const int n = n0 + (lane & 7) + (lane >> 4) * 8, k = k0 + ((lane >> 3) & 1) * 8;
    uint32_t regs[4];
    ldmatrix_x4(regs, tile + n * MatchTile::kRowBytes + k * 2);
    b[0] = B{{regs[0], regs[1]}};
    b[1] = B{{regs[2], regs[3]}};
  }

  static __device__ __forceinline__ void mma(float (&c)[4], const A& a, const B& b) {
    if constexpr (kBFloat16) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
    }
  }
};

__device__ __forceinline__ uint32_t to_tf32(float value) {
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(value));
  return bits;
}

// fp32 inputs: m16n8k8 TF32. kSplit = 3xTF32: each operand x = big + small
// (both TF32) and a.b ~ a_big b_big + a_big b_small + a_small b_big, which keeps
// about fp32 accuracy ("highest" precision); without it, plain TF32 ("high").
template <bool kSplit>
struct MmaTf32 {
  using Storage = float;
  static constexpr int kK = 8;
  struct A { uint32_t big[4], small[4]; };
  struct B { uint32_t big[2], small[2]; };

  // 3xTF32 truncates the big part: rounding would carry finite values near
  // FLT_MAX to inf, and inf - inf would make the small part NaN. Non-finite
  // values pass whole (NaN as the canonical NaN, whose high mantissa bits
  // survive the tensor core's 10-bit read), with no small part.
  static __device__ __forceinline__ void split(float value, uint32_t& big, uint32_t& small) {
    if (!kSplit) {
      big = to_tf32(value);
      small = 0u;
    } else if (isfinite(value)) {
      big = __float_as_uint(value) & 0xffffe000u;
      small = to_tf32(value - __uint_as_float(big));
    } else {
      big = isnan(value) ? 0x7fffffffu : __float_as_uint(value);
      small = 0u;
    }
  }

  static __device__ __forceinline__ const float* row_at(const char* tile, int row, int k) {
    return reinterpret_cast<const float*>(tile + row * MatchTile::kRowBytes) + k;
  }

  // a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); g = lane/4, t = lane%4.
  static __device__ __forceinline__ A load_a(const char* tile, int row0, int k0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const float* upper = row_at(tile, row0 + g, k0 + t);
    const float* lower = row_at(tile, row0 + g + 8, k0 + t);
    const float values[4] = {upper[0], lower[0], upper[4], lower[4]};
    A a;
#pragma unroll
    for (int i = 0; i < 4; ++i) split(values[i], a.big[i], a.small[i]);
    return a;
  }

  // b0 (k = t, n = g), b1 (k = t + 4, n = g), for atoms at n0 and n0 + 8.
  static __device__ __forceinline__ void load_b_pair(B (&b)[2], const char* tile, int n0, int k0,
                                                     int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int atom = 0; atom < 2; ++atom) {
      const float* row = row_at(tile, n0 + atom * 8 + g, k0 + t);
      split(row[0], b[atom].big[0], b[atom].small[0]);
      split(row[4], b[atom].big[1], b[atom].small[1]);
    }
  }

  static __device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }

  static __device__ __forceinline__ void mma(float (&c)[4], const A& a, const B& b) {
    if constexpr (kSplit) {  // small terms first: they would vanish against the big product
      mma_tf32(c, a.small, b.big);
      mma_tf32(c, a.big, b.small);
    }
    mma_tf32(c, a.big, b.big);
  }
};

}  // namespace refmatch::mma
