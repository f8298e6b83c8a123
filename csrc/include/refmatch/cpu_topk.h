// The CPU fused top-k (k >= 1, float32; csrc/cpu_topk_isa.cpp): one compiled
// copy per x86 vector width, each in its own translation unit with its own ISA flags;
// the AVX-512 copy with bfloat16 dot products also screens (`window`).
// Only plain data and functions cross this header, so no inline or template code
// built with AVX-512 flags can be merged into code that runs on other CPUs.
#pragma once

#include <cstdint>

namespace refmatch {

struct TopkBlock {
  const float* query;      // [rows, dim], contiguous
  int64_t rows, dim;
  const float* reference;  // [refs, dim], contiguous
  int64_t refs;
  const float* bias;       // [refs] or nullptr
  float alpha;             // score = alpha * (q . r) + bias
  int64_t first_index;     // index of reference row 0; first_index + refs < 2^31
  int64_t k;
  float* state_score;      // [rows, k]: each row's best so far, best first
  int32_t* state_index;    // [rows, k]
  const float* window;     // [rows] bounds on |bfloat16 screened - float32 score|, or nullptr: no screen
};

struct TopkCounts {
  int64_t vectors;  // (row, vector of references) pairs visited
  int64_t float32;  // of them, those scored in float32 (all without a screen; the rest only in bfloat16)
};

// The update of rows [begin, end) by one block, per vector width (the screen: avx512_bf16 only).
TopkCounts cpu_topk_rows_avx512(const TopkBlock& block, int64_t begin, int64_t end);
TopkCounts cpu_topk_rows_avx2(const TopkBlock& block, int64_t begin, int64_t end);
TopkCounts cpu_topk_rows_avx512_bf16(const TopkBlock& block, int64_t begin, int64_t end);

}  // namespace refmatch
