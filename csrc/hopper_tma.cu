// Tensor maps for the Hopper kernel's TMA loads. cuTensorMapEncodeTiled is a driver
// function: it is looked up through the runtime on first use, so the module links no
// libcuda and still imports on machines without a driver.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "refmatch/hopper_tma.cuh"
#include "refmatch/match_plan_sm90.h"

namespace refmatch {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 function = [] {
    void* pointer = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t status =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &pointer, 12000, cudaEnableDefault, &found);
#else  // CUDA 12.0 - 12.4: the lookup without a version
    const cudaError_t status = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &pointer, cudaEnableDefault, &found);
#endif
    if (status != cudaSuccess || found != cudaDriverEntryPointSuccess || pointer == nullptr) {
      const std::string reason = status != cudaSuccess ? cudaGetErrorString(status)
                                 : found == cudaDriverEntryPointVersionNotSufficent
                                     ? "the driver is older than CUDA 12.0"
                                     : "the driver has no such symbol";
      throw std::runtime_error("refmatch CUDA match: no cuTensorMapEncodeTiled for TMA loads (" + reason +
                               "); REFMATCH_CUDA_HOPPER_LOADS=cp.async does without");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(pointer);
  }();
  return function;
}

// One map of `rank` (1 or 2) dimensions, innermost first; strides[rank - 1] in bytes for the
// outer ones (a rank-1 map passes one it does not read, as some drivers may want a pointer).
void encode(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, const void* address,
            const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapSwizzle swizzle,
            const char* what) {
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult result = encode_tiled()(map, type, rank, const_cast<void*>(address), dims, strides, box,
                                         element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    throw std::runtime_error(std::string("refmatch CUDA match: cuTensorMapEncodeTiled(") + what +
                             ") failed with CUresult " + std::to_string(static_cast<int>(result)));
  }
}

}  // namespace

void encode_hopper_tma_maps(detail::MatchParams& p) {
  using Tile = HopperTile;
  // 16-bit elements: TMA only moves them, so one type serves fp16 and bf16.
  const cuuint64_t bank_dims[2] = {static_cast<cuuint64_t>(p.dim), static_cast<cuuint64_t>(p.num_refs)};
  const cuuint64_t bank_strides[1] = {static_cast<cuuint64_t>(p.stride_rm) * 2};
  const cuuint32_t bank_box[2] = {Tile::kChunkElements, Tile::kBlockM};
  encode(&p.reference_map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, p.reference, bank_dims, bank_strides, bank_box,
         CU_TENSOR_MAP_SWIZZLE_128B, "reference");
  if (p.metric == static_cast<int>(MatchMetric::kDot)) return;  // dot reads no metric terms
  const cuuint64_t stat_dims[1] = {static_cast<cuuint64_t>(p.num_refs)};
  const cuuint64_t stat_strides[1] = {static_cast<cuuint64_t>(round_up(p.num_refs * 4, 16))};  // unread
  const cuuint32_t stat_box[1] = {Tile::kStatBoxRows};
  encode(&p.stat_map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 1, p.ref_stat, stat_dims, stat_strides, stat_box,
         CU_TENSOR_MAP_SWIZZLE_NONE, "ref_stat");
}

}  // namespace refmatch
