// Hopper primitives in inline PTX, sm_90a only: shared-memory matrix
// descriptors for the 128B-swizzled K-major layout, the m64n128k16 fp16/bf16
// warpgroup MMA (wgmma; A from shared memory or registers) with float32
// accumulators and its fences, mbarriers (with cp.async arrivals and TMA
// transaction counts), TMA tile loads, named barriers and warpgroup register
// reallocation.
#pragma once

#include <cstdint>

#include "refmatch/match_plan_sm90.h"
#include "refmatch/mma_fragments.cuh"

namespace refmatch::wgmma {

// Descriptor of a K-major operand in 128B swizzle whose 8-row atoms (1024 B,
// 1024-aligned) are stacked along M or N: start address, leading offset (unused
// in this mode, encoded as 1), stride between atoms 1024 B, swizzle mode 1.
// A k16 step inside the 128-byte row is the start address plus 32 bytes.
__device__ __forceinline__ uint64_t descriptor(const void* start) {
  const uint64_t address = mma::shared_address(start);
  return ((address & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (uint64_t{HopperTile::kAtomBytes >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Generic-proxy shared stores (cp.async, st.shared) before async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// mbarrier in shared memory: `count` arrivals complete a phase.
__device__ __forceinline__ void barrier_init(uint64_t* barrier, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mma::shared_address(barrier)), "r"(count)
               : "memory");
}
// Makes initialised mbarriers visible to the asynchronous copy arrivals.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void barrier_arrive(uint64_t* barrier) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n"
               ::"r"(mma::shared_address(barrier)) : "memory");
}
// Arrives once this thread's earlier cp.async copies have landed (counted in init).
__device__ __forceinline__ void barrier_arrive_after_copies(uint64_t* barrier) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(mma::shared_address(barrier))
               : "memory");
}
// Arrives and adds `bytes` to the phase's expected transactions: the phase completes
// once the TMA loads signalling this barrier have delivered that many bytes.
__device__ __forceinline__ void barrier_arrive_expect_bytes(uint64_t* barrier, int bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n"
               ::"r"(mma::shared_address(barrier)), "r"(bytes) : "memory");
}

// TMA tile loads: the box of `map` (a __grid_constant__ kernel parameter) at these
// element coordinates (innermost first) into shared memory at `destination`, zeros
// outside the tensor; completion counts the box's bytes on `barrier`.
__device__ __forceinline__ void tma_load(void* destination, const void* map, int x, uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.1d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2}], [%3];\n"
      ::"r"(mma::shared_address(destination)), "l"(map), "r"(x), "r"(mma::shared_address(barrier)) : "memory");
}
__device__ __forceinline__ void tma_load(void* destination, const void* map, int x, int y, uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(mma::shared_address(destination)), "l"(map), "r"(x), "r"(y),
      "r"(mma::shared_address(barrier)) : "memory");
}
__device__ __forceinline__ void prefetch_tensor_map(const void* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}

// Blocks until the phase with this parity (0 for the first) has completed.
__device__ __forceinline__ void barrier_wait(uint64_t* barrier, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n}\n" ::"r"(mma::shared_address(barrier)), "r"(parity) : "memory");
}

// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads.
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Moves registers between warpgroups: the producer needs few, the consumers many.
template <int kRegisters>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// Keeps the compiler from moving accumulator reads or writes across a wait.
template <int kM, int kN>
__device__ __forceinline__ void pin(float (&acc)[kM][kN][4]) {
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(acc[i][j][e])::"memory");
}

#define REFMATCH_ACC8(j) \
  "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3]), "+f"(d[j + 1][0]), "+f"(d[j + 1][1]), \
      "+f"(d[j + 1][2]), "+f"(d[j + 1][3])
#define REFMATCH_ACC64                                                                             \
  REFMATCH_ACC8(0), REFMATCH_ACC8(2), REFMATCH_ACC8(4), REFMATCH_ACC8(6), REFMATCH_ACC8(8),        \
      REFMATCH_ACC8(10), REFMATCH_ACC8(12), REFMATCH_ACC8(14)
#define REFMATCH_D64                                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                        \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "               \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "               \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "

// A from a shared-memory descriptor (operand %64), B from one (%65); %66 = accumulate.
#define REFMATCH_WGMMA_SS(TYPE)                                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                       \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE "\n" REFMATCH_D64     \
               "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                    \
               : REFMATCH_ACC64                                                                   \
               : "l"(a), "l"(b), "r"(accumulate))

// A from four registers per thread (%64-%67, m16n8k16's A fragment per warp), B from
// a shared-memory descriptor (%68); %69 = accumulate.
#define REFMATCH_WGMMA_RS(TYPE)                                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                       \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE "\n" REFMATCH_D64     \
               "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"                                      \
               : REFMATCH_ACC64                                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate))

// d (+)= A B^T for one warpgroup: A 64 x 16 and B 128 x 16, both K-major in
// shared memory; d is the m64n128 accumulator as 16 n8 atoms of 4 floats.
// accumulate = 0 overwrites d.
template <bool kBFloat16>
__device__ __forceinline__ void mma_m64n128k16(float (&d)[16][4], uint64_t a, uint64_t b, int accumulate) {
  if constexpr (kBFloat16) {
    REFMATCH_WGMMA_SS("bf16");
  } else {
    REFMATCH_WGMMA_SS("f16");
  }
}

// The same with A in registers: warp w of the warpgroup holds rows 16 w .. 16 w + 15
// as mma.sync's m16n8k16 A fragment (ldmatrix.x4 of the 16 x 16 block); B as above.
template <bool kBFloat16>
__device__ __forceinline__ void mma_m64n128k16(float (&d)[16][4], const uint32_t (&a)[4], uint64_t b,
                                               int accumulate) {
  if constexpr (kBFloat16) {
    REFMATCH_WGMMA_RS("bf16");
  } else {
    REFMATCH_WGMMA_RS("f16");
  }
}

#undef REFMATCH_WGMMA_RS
#undef REFMATCH_WGMMA_SS
#undef REFMATCH_D64
#undef REFMATCH_ACC64
#undef REFMATCH_ACC8

}  // namespace refmatch::wgmma
