// Stand-ins for the CUDA sources (cuda_runtime_status.cu, match_cuda.cu) when
// the module is built without CUDA: the functions exist and say why they
// cannot run.
#include <stdexcept>

#include "refmatch/cuda_runtime_status.h"
#include "refmatch/match_cuda.h"

namespace refmatch {

namespace {
constexpr const char* kNoCuda = "refmatch._C was built without CUDA (no nvcc, or REFMATCH_CUDA=0)";
}  // namespace

std::pair<int, std::string> cuda_device_count() { return {0, kNoCuda}; }

int cuda_runtime_version() { return 0; }

void match_argmax(const MatchArgs&) { throw std::runtime_error(kNoCuda); }

int64_t match_splits(int64_t, int64_t, int64_t, int, bool, int, uintptr_t, int64_t, int64_t, int64_t, int64_t) {
  throw std::runtime_error(kNoCuda);
}

const char* match_kernel_name(int64_t, int, bool, int, int64_t, bool, uintptr_t, int64_t, int64_t, int64_t, bool,
                              int64_t) {
  throw std::runtime_error(kNoCuda);
}

}  // namespace refmatch
