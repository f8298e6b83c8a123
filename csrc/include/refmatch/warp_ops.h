// The warp-wide operations of the per-tile epilogues (match_epilogue.cuh), as a
// template parameter: DeviceWarp is the hardware warp (full-mask shuffles and
// votes); host_warp.h runs the same epilogue code on 32 host threads, so the
// CPU tests check the device code itself.
#pragma once

namespace refmatch {

struct DeviceWarp {
#if defined(__CUDACC__)
  static constexpr unsigned kFullMask = 0xffffffffu;

  template <class T>
  __device__ __forceinline__ static T shfl_xor(T value, int lane_mask) {
    return __shfl_xor_sync(kFullMask, value, lane_mask);
  }
  template <class T>
  __device__ __forceinline__ static T shfl(T value, int source_lane) {
    return __shfl_sync(kFullMask, value, source_lane);
  }
  __device__ __forceinline__ static bool any(bool predicate) { return __any_sync(kFullMask, predicate); }
  __device__ __forceinline__ static void sync() { __syncwarp(); }
#endif
};

}  // namespace refmatch
