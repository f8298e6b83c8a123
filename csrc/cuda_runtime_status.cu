// CUDA runtime queries, linked against the static runtime so that the module
// imports on machines with no GPU or driver; calls then return an error.
#include <cuda_runtime_api.h>

#include "refmatch/cuda_runtime_status.h"

namespace refmatch {

std::pair<int, std::string> cuda_device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) return {0, cudaGetErrorString(status)};
  return {count, std::string()};
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace refmatch
