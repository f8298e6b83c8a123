"""CUDA backend: kernels compiled into the torch-free module ``refmatch._C``.

This build carries the module, its build info and the shared tie/merge headers;
the fused tensor-core kernel that will serve ``match`` is not in it yet, so the
backend reports what it has and declines every call with that reason.
"""


def native_module():
    """``refmatch._C`` or None when it was not built."""
    try:
        from refmatch import _C
    except ImportError:
        return None
    return _C


class CudaBackend:
    name = "cuda"

    def status(self):
        module = native_module()
        if module is None:
            return False, "refmatch._C is not built (reinstall with a C++ compiler and cmake; nvcc for CUDA)"
        info = module.build_info()
        if not info["cuda"]:
            return False, "refmatch._C was built without CUDA (no nvcc, or REFMATCH_CUDA=0)"
        archs = ", ".join(f"sm_{arch}" for arch in info["cuda_archs"].split(","))
        count, error = module.cuda_device_count()
        if error or count == 0:
            return False, f"compiled for {archs}; no usable device: {error or 'no CUDA device'}"
        return False, f"compiled for {archs}, {count} device(s); the fused CUDA match kernel is not built yet"

    def decline_reason(self, problem):
        return self.status()[1]
