// Host side of the fused CUDA match kernels (csrc/include/refmatch/match_kernel.cuh,
// mma.sync; match_kernel_sm90.cuh, wgmma): argument checks, kernel choice per
// device, dtype and precision, launch plan, and
// errors as exceptions carrying cudaGetErrorString. Launches go on the
// caller's stream and never synchronise, so they can be captured in a graph.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "refmatch/device_scope.h"
#include "refmatch/hopper_tma.cuh"
#include "refmatch/match_cuda.h"
#include "refmatch/match_kernel.cuh"
#include "refmatch/match_kernel_sm90.cuh"

namespace refmatch {
namespace {

using Kernel = void (*)(detail::MatchParams);
constexpr int kMergeThreads = 256;
constexpr int64_t kMaxSplits = 65535;  // gridDim.y limit
constexpr int64_t kMaxRowBlocks = 2147483647;  // gridDim.x limit

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("refmatch._C.match_argmax: " + message);
}

void check_hopper_rows(int64_t hopper_rows) {
  require(hopper_rows == 0 || hopper_rows == hopper_block_n(1) || hopper_rows == hopper_block_n(2),
          "hopper_rows must be 0 (mma.sync), 128 or 256, got " + std::to_string(hopper_rows));
}

// The kernel a call runs and its launch shape. The Hopper kernel is taken when asked
// (hopper_rows > 0: the cuda backend's default on sm_90 at k = 1, and for top-k where
// REFMATCH_CUDA_HOPPER_TOPK=wgmma), on a compute capability 9.0 device, for calls it can serve.
struct LaunchPlan {
  Kernel kernel;
  const char* name;  // "wgmma" + "-256" (256 query rows) + "-rs" (query in registers) + "-tma", or "mma.sync"
  int threads;
  int64_t block_n;  // query rows per CTA
  int64_t block_m;  // reference rows per tile: splits are whole tiles
  int64_t dim_chunks;
  bool query_resident;
  int64_t smem_bytes;
  bool tma_loads;  // the wgmma kernel's producer loads through TMA
  bool shared_lists;  // the wgmma kernel's top-k lists live in shared memory (hopper_lists_fit)
};

template <bool kTopK>
Kernel mma_sync_kernel(int dtype, bool allow_tf32) {
  switch (static_cast<MatchDtype>(dtype)) {
    case MatchDtype::kFloat16:
      return detail::match_kernel<mma::Mma16Bit<false>, kTopK>;
    case MatchDtype::kBFloat16:
      return detail::match_kernel<mma::Mma16Bit<true>, kTopK>;
    case MatchDtype::kFloat32:
      return allow_tf32 ? detail::match_kernel<mma::MmaTf32<false>, kTopK>
                        : detail::match_kernel<mma::MmaTf32<true>, kTopK>;
  }
  throw std::invalid_argument("refmatch._C: dtype code must be 0 (float32), 1 (float16) or "
                              "2 (bfloat16), got " + std::to_string(dtype));
}

template <int kRowBlocks, bool kTopK>
Kernel hopper_kernel(bool bf16, bool query_in_registers) {
  if (query_in_registers) {
    return bf16 ? detail::match_sm90_kernel<true, kRowBlocks, true, kTopK>
                : detail::match_sm90_kernel<false, kRowBlocks, true, kTopK>;
  }
  return bf16 ? detail::match_sm90_kernel<true, kRowBlocks, false, kTopK>
              : detail::match_sm90_kernel<false, kRowBlocks, false, kTopK>;
}

// The wgmma variant's kernel and name for 1 or 2 row blocks, where the query lives
// and how the bank is loaded (a parameter of the same kernel), k = 1 or top-k.
std::pair<Kernel, const char*> hopper_variant(bool bf16, int row_blocks, bool query_in_registers, bool tma,
                                              bool top_k) {
  static const char* const names[2][2][2] = {{{"wgmma", "wgmma-tma"}, {"wgmma-rs", "wgmma-rs-tma"}},
                                             {{"wgmma-256", "wgmma-256-tma"}, {"wgmma-256-rs", "wgmma-256-rs-tma"}}};
  const char* name = names[row_blocks - 1][query_in_registers][tma];
  if (row_blocks == 2) {
    return {top_k ? hopper_kernel<2, true>(bf16, query_in_registers) : hopper_kernel<2, false>(bf16, query_in_registers),
            name};
  }
  return {top_k ? hopper_kernel<1, true>(bf16, query_in_registers) : hopper_kernel<1, false>(bf16, query_in_registers),
          name};
}

int element_bytes_of(int dtype) { return dtype == static_cast<int>(MatchDtype::kFloat32) ? 4 : 2; }

// The wgmma kernel has a body only in sm_90a code (plain sm_90 builds trap).
bool built_for_hopper() { return std::string(REFMATCH_CUDA_ARCHS).find("90a") != std::string::npos; }

bool is_hopper(int device) {
  int major = 0, minor = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute(ComputeCapabilityMajor)");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute(ComputeCapabilityMinor)");
  return major == 9 && minor == 0;
}

// Sets the kernel's shared-memory limit to the device's whole opt-in maximum
// (per device, cheap, no stream work): never the size of this call, so a call
// with a smaller layout on another thread (or after a graph capture) never lowers it.
// hopper_tma: TMA loads asked for and possible (hopper_tma_eligible); shared_lists: top-k
// lists in shared memory asked for (taken where hopper_lists_fit).
LaunchPlan plan_launch(int dtype, bool allow_tf32, int64_t dim, int device, int64_t hopper_rows,
                       bool hopper_query_registers, bool hopper_tma, int ref_copy_bytes, int64_t k,
                       bool shared_lists) {
  int smem_limit = 0;
  check_cuda(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  LaunchPlan plan{};
  if (hopper_rows > 0 && built_for_hopper() && hopper_eligible(dim, dtype, ref_copy_bytes, smem_limit) &&
      is_hopper(device)) {
    const bool bf16 = dtype == static_cast<int>(MatchDtype::kBFloat16);
    const int row_blocks = hopper_row_blocks(dim, hopper_rows, smem_limit);
    std::tie(plan.kernel, plan.name) = hopper_variant(
        bf16, row_blocks, hopper_query_registers && hopper_query_fits_registers(dim, row_blocks), hopper_tma, k > 1);
    plan.tma_loads = hopper_tma;
    plan.threads = HopperTile::kThreads;
    plan.block_n = hopper_block_n(row_blocks);
    plan.block_m = HopperTile::kBlockM;
    plan.dim_chunks = match_dim_chunks(dim, 2);
    plan.query_resident = true;
    plan.shared_lists = shared_lists && k > 1 && hopper_lists_fit(dim, row_blocks, k, smem_limit);
    plan.smem_bytes = hopper_smem_layout(plan.dim_chunks, row_blocks, plan.shared_lists ? k : 0).total_bytes;
  } else {
    plan.kernel = k > 1 ? mma_sync_kernel<true>(dtype, allow_tf32) : mma_sync_kernel<false>(dtype, allow_tf32);
    plan.name = "mma.sync";
    plan.threads = MatchTile::kThreads;
    plan.block_n = MatchTile::kBlockN;
    plan.block_m = MatchTile::kBlockM;
    plan.dim_chunks = match_dim_chunks(dim, element_bytes_of(dtype));
    plan.query_resident = match_query_resident(plan.dim_chunks, smem_limit);
    plan.smem_bytes = match_smem_layout(plan.dim_chunks, plan.query_resident).total_bytes;
  }
  if (plan.smem_bytes > smem_limit) {
    throw std::runtime_error("refmatch CUDA match: needs " + std::to_string(plan.smem_bytes) +
                             " bytes of shared memory per block, the device allows " +
                             std::to_string(smem_limit));
  }
  check_cuda(cudaFuncSetAttribute(plan.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_limit),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  return plan;
}

void check_args(const MatchArgs& a) {
  require(a.metric >= 0 && a.metric <= 2, "metric code must be 0 (dot), 1 (cosine) or 2 (l2), got " +
                                              std::to_string(a.metric));
  require(a.batch >= 0 && a.height >= 0 && a.width >= 0, "batch, height and width must be >= 0");
  int64_t pixels = 0, rows = 0;
  require(!__builtin_mul_overflow(a.height, a.width, &pixels) && !__builtin_mul_overflow(a.batch, pixels, &rows),
          "batch * height * width overflows int64");
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
  require(a.k >= 1 && a.k <= kMaxTopK, "k must be in [1, " + std::to_string(kMaxTopK) + "], got " +
                                          std::to_string(a.k));
  check_hopper_rows(a.hopper_rows);
  require(a.ablate >= 0 && a.ablate <= kAblateAll, "ablate must be 0, 1 (no loads), 2 (no epilogue) or 3 (neither)");
  require(a.splits == 1 || a.k > 1 || (a.partial_score != 0 && a.partial_index != 0),
          "splits > 1 needs partial_score and partial_index workspaces [splits, N]");
}

}  // namespace

int64_t match_splits(int64_t num_rows, int64_t num_refs, int64_t dim, int dtype, bool allow_tf32,
                     int device, uintptr_t reference, int64_t stride_m, int64_t stride_d, int64_t hopper_rows,
                     int64_t k) {
  mma_sync_kernel<false>(dtype, allow_tf32);  // a bad dtype raises before any CUDA call
  check_hopper_rows(hopper_rows);
  const DeviceScope scope(device);
  // The launch's tiles: the bank's alignment decides between the wgmma and mma.sync kernels
  // (the query's place and the loads do not change the tiles).
  const LaunchPlan plan = plan_launch(dtype, allow_tf32, dim, device, hopper_rows, false, false,
                                      reference_copy_bytes(reference, stride_m, stride_d, element_bytes_of(dtype)), k,
                                      false);
  int per_sm = 0, sms = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, plan.kernel, plan.threads, plan.smem_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  const int64_t splits =
      plan_match_splits(num_rows, num_refs, int64_t{sms} * (per_sm > 0 ? per_sm : 1), plan.block_m, plan.block_n);
  return splits < kMaxSplits ? splits : kMaxSplits;
}

const char* match_kernel_name(int64_t dim, int dtype, bool allow_tf32, int device, int64_t hopper_rows,
                              bool hopper_query_registers, uintptr_t reference, int64_t stride_m, int64_t stride_d,
                              int64_t num_refs, bool hopper_tma_loads, int64_t k) {
  check_hopper_rows(hopper_rows);
  require(k >= 1 && k <= kMaxTopK, "k must be in [1, " + std::to_string(kMaxTopK) + "], got " + std::to_string(k));
  const DeviceScope scope(device);
  const bool tma = hopper_tma_loads && hopper_tma_eligible(num_refs, dim, reference, stride_m, 0);
  const LaunchPlan plan = plan_launch(dtype, allow_tf32, dim, device, hopper_rows, hopper_query_registers, tma,
                                      reference_copy_bytes(reference, stride_m, stride_d, element_bytes_of(dtype)), k,
                                      false);
  return plan.name;
}

void match_argmax(const MatchArgs& a) {
  mma_sync_kernel<false>(a.dtype, a.allow_tf32);
  check_args(a);
  const int64_t num_rows = a.batch * a.height * a.width;
  if (num_rows == 0) return;

  const DeviceScope scope(a.device);
  const int copy_bytes = reference_copy_bytes(a.reference, a.reference_strides[0], a.reference_strides[1],
                                              element_bytes_of(a.dtype));
  const uintptr_t stat = a.metric == static_cast<int>(MatchMetric::kDot) ? 0 : a.ref_stat;
  const bool tma = a.hopper_tma_loads &&
                   hopper_tma_eligible(a.num_refs, a.dim, a.reference, a.reference_strides[0], stat);
  const LaunchPlan plan = plan_launch(a.dtype, a.allow_tf32, a.dim, a.device, a.hopper_rows,
                                      a.hopper_query_registers, tma, copy_bytes, a.k, a.hopper_shared_lists);
  require(a.ablate == 0 || std::string(plan.name) != "mma.sync",
          "ablate leaves out stages of the wgmma kernel, and this call runs mma.sync");
  const bool split = a.splits > 1 && a.k == 1;  // top-k lists go straight to the outputs
  detail::MatchParams p{};
  p.query = reinterpret_cast<const void*>(a.query);
  p.reference = reinterpret_cast<const void*>(a.reference);
  p.ref_stat = reinterpret_cast<const float*>(a.ref_stat);
  p.split_starts = reinterpret_cast<const int64_t*>(a.split_starts);
  p.out_score = reinterpret_cast<float*>(split ? a.partial_score : a.out_score);
  p.out_index = reinterpret_cast<int64_t*>(split ? a.partial_index : a.out_index);
  p.num_rows = num_rows;
  p.pixels_per_image = a.height * a.width;
  p.width = a.width;
  p.dim = a.dim;
  p.num_refs = a.num_refs;
  p.refs_per_split = match_refs_per_split(a.num_refs, a.splits, plan.block_m);
  p.dim_chunks = plan.dim_chunks;
  p.stride_qb = a.query_strides[0];
  p.stride_qd = a.query_strides[1];
  p.stride_qh = a.query_strides[2];
  p.stride_qw = a.query_strides[3];
  p.stride_rm = a.reference_strides[0];
  p.stride_rd = a.reference_strides[1];
  p.metric = a.metric;
  p.slots = static_cast<int>(a.k);
  p.ref_copy_bytes = copy_bytes;
  p.query_resident = plan.query_resident;
  p.tma_loads = plan.tma_loads;
  p.shared_lists = plan.shared_lists;
  p.ablate = a.ablate;
  if (p.tma_loads) encode_hopper_tma_maps(p);

  const auto stream = reinterpret_cast<cudaStream_t>(a.stream);
  const int64_t row_blocks = ceil_div(num_rows, plan.block_n);
  require(row_blocks <= kMaxRowBlocks, std::to_string(num_rows) + " query rows need " + std::to_string(row_blocks) +
                                           " CTAs of " + std::to_string(plan.block_n) + " rows; a grid takes at most " +
                                           std::to_string(kMaxRowBlocks) + ": match fewer rows per call");
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(a.splits));
  // The static runtime's error record holds this module's calls only, each raised where it failed
  // (a caller may have caught that and called again): cleared, so the check below names this launch.
  static_cast<void>(cudaGetLastError());
  plan.kernel<<<grid, plan.threads, plan.smem_bytes, stream>>>(p);
  check_cuda(cudaGetLastError(), "match kernel launch");
  if (split) {
    const auto blocks = static_cast<unsigned>(ceil_div(num_rows, kMergeThreads));
    detail::merge_splits_kernel<<<blocks, kMergeThreads, 0, stream>>>(
        p.out_score, p.out_index, a.splits, num_rows, reinterpret_cast<float*>(a.out_score),
        reinterpret_cast<int64_t*>(a.out_index));
    check_cuda(cudaGetLastError(), "merge_splits_kernel launch");
  }
}

}  // namespace refmatch
