// Queries of the CUDA runtime that the bindings expose. Without CUDA they
// report that the module was built without it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace refmatch {

// (number of devices, error string); the string is empty on success.
std::pair<int, std::string> cuda_device_count();

int cuda_runtime_version();

}  // namespace refmatch
