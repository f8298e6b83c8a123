// The CPU passes' threads (cpu_team.h).
//
// Why torch's OpenMP team: after each parallel torch operation, the team's workers spin for
// some milliseconds waiting for the next one. Threads of our own, started right after such an
// operation (the walk's norms, a class's rows), shared the cores with those spinning workers:
// on 2 cores a k = 1 walk at 8192 x 16384 x 64 took 60 ms against 51 with OMP_WAIT_POLICY=PASSIVE,
// and four class-wise walks 95 against 65. On the team itself, the spinning workers take the parts.
//
// libgomp's GOMP_parallel(fn, data, threads, flags) is the entry point compilers emit for
// `#pragma omp parallel`; LLVM's and Intel's runtimes export it too. It is looked up, not
// linked, so that this module never loads a second OpenMP runtime beside torch's.
#include "refmatch/cpu_team.h"

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define REFMATCH_HAS_DLOPEN 1
#endif

#include <atomic>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace refmatch {
namespace {

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
std::atomic<GompParallel> team_parallel{nullptr};

struct Parts {
  std::atomic<int64_t> next{0};
  int64_t count;
  const std::function<void(int64_t)>* run;
  std::mutex failure_lock;
  std::exception_ptr failure;
};

// Each thread takes the next part until none is left: a slower thread takes fewer.
void take_parts(void* data) {
  auto& parts = *static_cast<Parts*>(data);
  for (int64_t part; (part = parts.next.fetch_add(1)) < parts.count;) {
    try {
      (*parts.run)(part);
    } catch (...) {  // never across the OpenMP runtime's frames
      std::lock_guard<std::mutex> held(parts.failure_lock);
      if (!parts.failure) parts.failure = std::current_exception();
    }
  }
}

}  // namespace

bool attach_openmp_team(const std::string& library) {
  GompParallel parallel = nullptr;
#ifdef REFMATCH_HAS_DLOPEN
  // Where the dynamic linker binds torch's own calls: the global scope first (a runtime in
  // LD_PRELOAD, or torch's libgomp, which libtorch_global_deps loads there), then the
  // dependencies of `library`, which a handle's lookup covers.
  parallel = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
  void* handle = parallel == nullptr ? dlopen(library.c_str(), RTLD_NOW | RTLD_NOLOAD) : nullptr;
  if (handle != nullptr) {
    parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
    dlclose(handle);  // drops the reference dlopen took; torch keeps the library loaded
  }
#else
  (void)library;
#endif
  team_parallel = parallel;
  return parallel != nullptr;
}

void detach_openmp_team() { team_parallel = nullptr; }

std::string openmp_team_library() {
  const GompParallel parallel = team_parallel.load();
#ifdef REFMATCH_HAS_DLOPEN
  Dl_info where;
  if (parallel != nullptr && dladdr(reinterpret_cast<void*>(parallel), &where) != 0 && where.dli_fname != nullptr)
    return where.dli_fname;
#endif
  return parallel != nullptr ? "?" : "";
}

void run_parts(int64_t parts, int threads, const std::function<void(int64_t)>& run) {
  Parts work;
  work.count = parts;
  work.run = &run;
  const int64_t team = threads < parts ? threads : parts;
  const GompParallel parallel = team_parallel.load();
  if (team <= 1) {
    take_parts(&work);
  } else if (parallel != nullptr) {
    parallel(take_parts, &work, static_cast<unsigned>(team), 0);
  } else {
    std::vector<std::thread> helpers;
    try {  // reserved first: a vector that grows could throw with threads it has not joined
      helpers.reserve(team - 1);
      for (int64_t t = 1; t < team; ++t) helpers.emplace_back(take_parts, &work);
    } catch (...) {  // fewer threads: the others take more parts
    }
    take_parts(&work);
    for (auto& helper : helpers) helper.join();
  }
  if (work.failure) std::rethrow_exception(work.failure);
}

}  // namespace refmatch
