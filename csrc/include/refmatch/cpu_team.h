// Runs the parts of a CPU pass on several threads: on torch's own OpenMP team where one is
// attached (csrc/cpu_team.cpp), else on threads started for the call.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace refmatch {

// Finds the GOMP_parallel that torch's own calls bind to (the global scope's, else one among the
// dependencies of `library`, torch's loaded extension module) and runs later passes on that
// runtime's team (the calling thread's: libgomp keeps one per thread); whether found.
bool attach_openmp_team(const std::string& library);

// From now on, threads started per call (a forked child: its OpenMP team's threads are gone).
void detach_openmp_team();

// The file of the attached OpenMP runtime, or "" where passes start their own threads.
std::string openmp_team_library();

// Calls run(part) for every part in [0, parts), each once, on up to `threads` threads (the
// caller's among them); returns when all have ended, then rethrows the first exception any raised.
void run_parts(int64_t parts, int threads, const std::function<void(int64_t)>& run);

}  // namespace refmatch
