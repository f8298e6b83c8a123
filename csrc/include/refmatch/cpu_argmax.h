// The CPU fused argmax (k = 1, float32; csrc/cpu_argmax_isa.cpp): one compiled copy
// per x86 vector width, each in its own translation unit with its own ISA flags.
// Only plain data and functions cross this header, so no inline or template code
// built with AVX-512 flags can be merged into code that runs on other CPUs.
#pragma once

#include <cstdint>

namespace refmatch {

struct ArgmaxBlock {
  const float* query;      // [rows, dim], contiguous
  int64_t rows, dim;
  const float* reference;  // [refs, dim], contiguous
  int64_t refs;
  const float* bias;       // [refs] or nullptr
  float alpha;             // score = alpha * (q . r) + bias
  int64_t first_index;     // index of reference row 0; first_index + refs < 2^31
  float* state_score;      // [rows, width]: per row and lane, the best so far
  int32_t* state_index;    // [rows, width]
};

// Lanes per row of the state, and the update of rows [begin, end) by one block.
int cpu_argmax_width_avx512();
void cpu_argmax_rows_avx512(const ArgmaxBlock& block, int64_t begin, int64_t end);
int cpu_argmax_width_avx2();
void cpu_argmax_rows_avx2(const ArgmaxBlock& block, int64_t begin, int64_t end);

}  // namespace refmatch
