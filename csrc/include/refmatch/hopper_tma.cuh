// Host side of the Hopper kernel's TMA loads (match_kernel_sm90.cuh with
// tma_loads): the tensor maps of the bank and of its metric terms.
#pragma once

#include "refmatch/match_loads.cuh"

namespace refmatch {

// Fills p.reference_map (the fp16/bf16 bank [num_refs, dim], row stride stride_rm,
// in 128-row x 64-element boxes, 128B swizzle) and, for cosine and l2, p.stat_map
// (ref_stat [num_refs] float32 in 128-element boxes); zeros outside both. The call
// must pass hopper_tma_eligible. Host only, no stream work: capturable in a graph.
// Throws std::runtime_error when the driver lacks TMA or refuses a map.
void encode_hopper_tma_maps(detail::MatchParams& p);

}  // namespace refmatch
