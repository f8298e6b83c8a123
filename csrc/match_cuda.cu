// Host side of the fused CUDA match kernel (csrc/include/refmatch/match_kernel.cuh):
// argument checks, kernel choice per dtype and precision, launch plan, and
// errors as exceptions carrying cudaGetErrorString. Launches go on the
// caller's stream and never synchronise, so they can be captured in a graph.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "refmatch/match_cuda.h"
#include "refmatch/match_kernel.cuh"

namespace refmatch {
namespace {

using Kernel = void (*)(detail::MatchParams);
constexpr int kMergeThreads = 256;
constexpr int64_t kMaxSplits = 65535;  // gridDim.y limit

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("refmatch CUDA match: ") + what + " failed: " +
                             cudaGetErrorString(status));
  }
}

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("refmatch._C.match_argmax: " + message);
}

// Makes `device` current for one launch and restores the caller's device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) : device_(device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device_) check(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceScope() {
    if (previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

struct KernelChoice {
  Kernel kernel;
  int element_bytes;
};

KernelChoice choose_kernel(int dtype, bool allow_tf32) {
  switch (static_cast<MatchDtype>(dtype)) {
    case MatchDtype::kFloat16:
      return {detail::match_argmax_kernel<mma::Mma16Bit<false>>, 2};
    case MatchDtype::kBFloat16:
      return {detail::match_argmax_kernel<mma::Mma16Bit<true>>, 2};
    case MatchDtype::kFloat32:
      return {allow_tf32 ? detail::match_argmax_kernel<mma::MmaTf32<false>>
                         : detail::match_argmax_kernel<mma::MmaTf32<true>>,
              4};
  }
  throw std::invalid_argument("refmatch._C: dtype code must be 0 (float32), 1 (float16) or "
                              "2 (bfloat16), got " + std::to_string(dtype));
}

// Shared-memory layout on the current device; lets the kernel use the device's
// whole opt-in shared memory (per device, cheap, no stream work).
struct KernelLayout {
  int64_t dim_chunks;
  bool query_resident;
  int64_t smem_bytes;
};

KernelLayout prepare_kernel(const KernelChoice& choice, int64_t dim, int device) {
  int smem_limit = 0;
  check(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  KernelLayout layout{};
  layout.dim_chunks = match_dim_chunks(dim, choice.element_bytes);
  layout.query_resident = match_query_resident(layout.dim_chunks, smem_limit);
  layout.smem_bytes = match_smem_layout(layout.dim_chunks, layout.query_resident).total_bytes;
  if (layout.smem_bytes > smem_limit) {
    throw std::runtime_error("refmatch CUDA match: needs " + std::to_string(layout.smem_bytes) +
                             " bytes of shared memory per block, the device allows " +
                             std::to_string(smem_limit));
  }
  // Always the device's opt-in maximum, never the size of this call: a call with
  // a smaller layout on another thread (or after a graph capture) never lowers it.
  check(cudaFuncSetAttribute(choice.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  return layout;
}

void check_args(const MatchArgs& a) {
  require(a.metric >= 0 && a.metric <= 2, "metric code must be 0 (dot), 1 (cosine) or 2 (l2), got " +
                                              std::to_string(a.metric));
  require(a.batch >= 0 && a.height >= 0 && a.width >= 0, "batch, height and width must be >= 0");
  require(a.dim >= 1, "dim must be >= 1, got " + std::to_string(a.dim));
  require(a.num_refs >= 1, "num_refs must be >= 1, got " + std::to_string(a.num_refs));
  require(a.splits >= 1 && a.splits <= kMaxSplits,
          "splits must be in [1, 65535], got " + std::to_string(a.splits));
  for (const int64_t stride : a.query_strides) require(stride >= 0, "query strides must be >= 0");
  for (const int64_t stride : a.reference_strides) require(stride >= 0, "reference strides must be >= 0");
  require(a.query != 0 && a.reference != 0, "query and reference pointers must be non-null");
  require(a.out_score != 0 && a.out_index != 0, "output pointers must be non-null");
  require(a.metric == static_cast<int>(MatchMetric::kDot) || a.ref_stat != 0,
          "ref_stat must be non-null for cosine and l2");
  require(a.splits == 1 || (a.partial_score != 0 && a.partial_index != 0),
          "splits > 1 needs partial_score and partial_index workspaces [splits, N]");
}

}  // namespace

int64_t match_splits(int64_t num_rows, int64_t num_refs, int64_t dim, int dtype, bool allow_tf32,
                     int device) {
  const KernelChoice choice = choose_kernel(dtype, allow_tf32);
  const DeviceScope scope(device);
  const KernelLayout layout = prepare_kernel(choice, dim, device);
  int per_sm = 0, sms = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, choice.kernel, MatchTile::kThreads,
                                                      layout.smem_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  const int64_t splits = plan_match_splits(num_rows, num_refs, int64_t{sms} * (per_sm > 0 ? per_sm : 1));
  return splits < kMaxSplits ? splits : kMaxSplits;
}

void match_argmax(const MatchArgs& a) {
  const KernelChoice choice = choose_kernel(a.dtype, a.allow_tf32);
  check_args(a);
  const int64_t num_rows = a.batch * a.height * a.width;
  if (num_rows == 0) return;

  const DeviceScope scope(a.device);
  const KernelLayout layout = prepare_kernel(choice, a.dim, a.device);
  const bool split = a.splits > 1;
  detail::MatchParams p{};
  p.query = reinterpret_cast<const void*>(a.query);
  p.reference = reinterpret_cast<const void*>(a.reference);
  p.ref_stat = reinterpret_cast<const float*>(a.ref_stat);
  p.out_score = reinterpret_cast<float*>(split ? a.partial_score : a.out_score);
  p.out_index = reinterpret_cast<int64_t*>(split ? a.partial_index : a.out_index);
  p.num_rows = num_rows;
  p.pixels_per_image = a.height * a.width;
  p.width = a.width;
  p.dim = a.dim;
  p.num_refs = a.num_refs;
  p.refs_per_split = match_refs_per_split(a.num_refs, a.splits);
  p.dim_chunks = layout.dim_chunks;
  p.stride_qb = a.query_strides[0];
  p.stride_qd = a.query_strides[1];
  p.stride_qh = a.query_strides[2];
  p.stride_qw = a.query_strides[3];
  p.stride_rm = a.reference_strides[0];
  p.stride_rd = a.reference_strides[1];
  p.metric = a.metric;
  p.ref_copy_bytes = reference_copy_bytes(a.reference, a.reference_strides[0], a.reference_strides[1],
                                          choice.element_bytes);
  p.query_resident = layout.query_resident;

  const auto stream = reinterpret_cast<cudaStream_t>(a.stream);
  const dim3 grid(static_cast<unsigned>(ceil_div(num_rows, MatchTile::kBlockN)),
                  static_cast<unsigned>(a.splits));
  choice.kernel<<<grid, MatchTile::kThreads, layout.smem_bytes, stream>>>(p);
  check(cudaGetLastError(), "match_argmax_kernel launch");
  if (split) {
    const auto blocks = static_cast<unsigned>(ceil_div(num_rows, kMergeThreads));
    detail::merge_splits_kernel<<<blocks, kMergeThreads, 0, stream>>>(
        p.out_score, p.out_index, a.splits, num_rows, reinterpret_cast<float*>(a.out_score),
        reinterpret_cast<int64_t*>(a.out_index));
    check(cudaGetLastError(), "merge_splits_kernel launch");
  }
}

}  // namespace refmatch
