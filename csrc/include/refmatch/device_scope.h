// CUDA runtime errors as exceptions carrying cudaGetErrorString, and a scope that makes a
// device current for one launch. Host code only.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace refmatch {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("refmatch CUDA match: ") + what + " failed: " +
                             cudaGetErrorString(status));
  }
}

// Makes `device` current and restores the caller's device when it ends.
class DeviceScope {
 public:
  explicit DeviceScope(int device) : device_(device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device_) check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceScope() {
    if (previous_ != device_) cudaSetDevice(previous_);  // no throw from a destructor
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

}  // namespace refmatch
