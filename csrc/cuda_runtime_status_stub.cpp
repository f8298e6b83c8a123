// Stand-in for cuda_runtime_status.cu when the module is built without CUDA.
#include "refmatch/cuda_runtime_status.h"

namespace refmatch {

std::pair<int, std::string> cuda_device_count() {
  return {0, "refmatch._C was built without CUDA (no nvcc, or REFMATCH_CUDA=0)"};
}

int cuda_runtime_version() { return 0; }

}  // namespace refmatch
