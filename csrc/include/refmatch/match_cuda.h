// Host entry points of the fused CUDA match kernels (k = 1 .. 64), torch-free: raw
// device pointers, element strides and the caller's stream. Errors are thrown
// as std::invalid_argument (bad arguments, before any CUDA call) or
// std::runtime_error carrying cudaGetErrorString; pybind11 turns them into
// ValueError and RuntimeError. Without CUDA the same functions throw
// std::runtime_error saying so.
#pragma once

#include <array>
#include <cstdint>

namespace refmatch {

constexpr int64_t kMaxTopK = 64;  // list slots per row of the fused top-k

struct MatchArgs {
  // Query maps [batch, dim, height, width], read through element strides
  // (rows [N, D] come as batch = 1, height = N, width = 1).
  uintptr_t query = 0;
  int dtype = 0;  // MatchDtype: 0 float32, 1 float16, 2 bfloat16
  int64_t batch = 0, dim = 0, height = 0, width = 0;
  std::array<int64_t, 4> query_strides{};
  // Reference [num_refs, dim], element strides; ref_stat [num_refs] float32:
  // 1/|r| (cosine), |r|^2 (l2), unused (dot).
  uintptr_t reference = 0;
  int64_t num_refs = 0;
  std::array<int64_t, 2> reference_strides{};
  uintptr_t ref_stat = 0;
  int metric = 0;  // MatchMetric: 0 dot, 1 cosine, 2 l2
  bool allow_tf32 = false;
  // Outputs [N]: oriented score float32, index int64 (-1: no finite score).
  uintptr_t out_score = 0, out_index = 0;
  // splits > 1 needs partials [splits, N] (float32 and int64) as workspace.
  int64_t splits = 1;
  uintptr_t partial_score = 0, partial_index = 0;
  uintptr_t stream = 0;  // cudaStream_t of the caller
  int device = 0;
  // Query rows per CTA of the wgmma kernel (sm_90a build, compute capability 9.0),
  // run where it can serve the call (hopper_eligible): 128, or 256 where that tile
  // fits (hopper_row_blocks; else 128). 0, or a call it cannot serve: mma.sync.
  int64_t hopper_rows = 0;
  // Device int64 [splits + 1], non-decreasing in [0, num_refs]: split s scans
  // bank rows [starts[s], starts[s + 1]) (class-aligned ranges for the class-wise
  // max, whose per-split partials are the per-class maxima). 0: even splits.
  uintptr_t split_starts = 0;
  // k = 1: the best per row, as above. k = 2 .. 64: sorted top-k lists, written
  // as [splits, N, k] straight into out_score / out_index (the caller merges
  // the splits; the partials are unused); on the wgmma kernel (in the tiles
  // hopper_rows picks) where hopper_rows > 0, else mma.sync.
  int64_t k = 1;
  // The wgmma kernel holds the query in registers (RS wgmma) where they suffice
  // (hopper_query_fits_registers: any D with 128 rows, D <= 64 with 256).
  bool hopper_query_registers = false;
  // The wgmma kernel's producer loads the bank through TMA where the call allows
  // (hopper_tma_eligible: 16-byte aligned bank and metric terms, M < 2^31).
  bool hopper_tma_loads = false;
  // Diagnostics only: HopperAblation bits (1 bank loads, 2 epilogue) that
  // the wgmma kernel leaves out, to time its stages by difference. Results are
  // meaningless; a call that runs another kernel is refused.
  int ablate = 0;
  // The wgmma kernel's top-k keeps its lists in shared memory where they fit beside the
  // pipeline (hopper_lists_fit: k <= 8 at D = 128 on an H100), else in the outputs.
  bool hopper_shared_lists = false;
};

// Launches the match kernel (and the split merge for k = 1) on args.stream; never syncs.
void match_argmax(const MatchArgs& args);

// Which kernel a call with these inputs runs: "wgmma" (128 query rows per CTA) or
// "wgmma-256", each with "-rs" (query in registers) and "-tma" (TMA loads; ref_stat
// taken as aligned) where asked and possible, or "mma.sync" (host queries only); top-k
// calls (k > 1) take the same tiles.
const char* match_kernel_name(int64_t dim, int dtype, bool allow_tf32, int device, int64_t hopper_rows,
                              bool hopper_query_registers, uintptr_t reference, int64_t stride_m,
                              int64_t stride_d, int64_t num_refs, bool hopper_tma_loads, int64_t k = 1);

// Split count that fills `device` for N rows and M references at `reference`
// (strides in elements), in the tiles the launch takes (host queries only:
// capturable, no sync).
int64_t match_splits(int64_t num_rows, int64_t num_refs, int64_t dim, int dtype, bool allow_tf32,
                     int device, uintptr_t reference, int64_t stride_m, int64_t stride_d, int64_t hopper_rows = 0,
                     int64_t k = 1);

}  // namespace refmatch
