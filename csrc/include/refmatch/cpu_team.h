// Runs the parts of a CPU pass on several threads: on torch's own OpenMP team where one is
// attached (csrc/cpu_team.cpp), else on threads started for the call.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace refmatch {

// Finds GOMP_parallel among the dependencies of `library`, a shared object this process has
// loaded (torch's extension module), and runs later passes on that runtime's team; whether found.
bool attach_openmp_team(const std::string& library);

// From now on, threads started per call (a forked child: its OpenMP team's threads are gone).
void detach_openmp_team();

// Whether passes run on an attached OpenMP team.
bool openmp_team_attached();

// Calls run(part) for every part in [0, parts), each once, on up to `threads` threads (the
// caller's among them); returns when all have ended, then rethrows the first exception any raised.
void run_parts(int64_t parts, int threads, const std::function<void(int64_t)>& run);

}  // namespace refmatch
