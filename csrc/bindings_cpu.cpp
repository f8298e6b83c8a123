// refmatch._C's CPU pass, run without the GIL from raw host pointers that the Python layer
// checked: the fused top-k (cpu_topk.h) and its bfloat16 screen.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "refmatch/cpu_team.h"
#include "refmatch/cpu_topk.h"

namespace py = pybind11;

namespace {

// The CPU fused top-k's vector widths that this module holds and this CPU (and its OS) runs,
// widest first: "avx512", "avx2".
std::vector<std::string> cpu_topk_isas() {
  std::vector<std::string> isas;
#ifdef REFMATCH_CPU_TOPK
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    isas.emplace_back("avx512");
  }
  if (avx2) isas.emplace_back("avx2");
#endif
  return isas;
}

// Whether this build and CPU run the fused top-k's bfloat16 screen (AVX-512 with AVX512_BF16).
bool cpu_screen_available() {
#ifdef REFMATCH_CPU_SCREEN
  __builtin_cpu_init();
  bool avx512 = false;
  for (const auto& held : cpu_topk_isas()) avx512 = avx512 || held == "avx512";
  return avx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// Rows [begin, end) of the CPU fused top-k over one reference block (cpu_topk.h), from raw
// host pointers, on up to `threads` threads (cpu_team.h) without the GIL. With a window, the
// bfloat16 screen. Returns the (row, vector of references) pairs visited, and those scored in float32.
std::tuple<int64_t, int64_t> cpu_topk_rows(const std::string& isa, uintptr_t query, int64_t rows, int64_t dim,
                                           uintptr_t reference, int64_t refs, uintptr_t bias, float alpha,
                                           int64_t first_index, int64_t k, uintptr_t state_score,
                                           uintptr_t state_index, int64_t begin, int64_t end, uintptr_t window,
                                           int threads) {
  if (rows < 0 || dim < 1 || refs < 0 || first_index < 0 || refs > INT32_MAX - first_index || k < 1 ||
      begin < 0 || end > rows || begin > end || threads < 1) {
    throw py::value_error("cpu_topk_rows: needs dim >= 1, k >= 1, threads >= 1, 0 <= begin <= end <= rows, "
                          "references below 2^31");
  }
  bool known = false;
  for (const auto& held : cpu_topk_isas()) known = known || held == isa;
  if (!known) throw py::value_error("cpu_topk_rows: isa must be one of cpu_topk_isas() on this CPU, got '" + isa + "'");
  if (window != 0 && (isa != "avx512" || !cpu_screen_available())) {
    throw py::value_error("cpu_topk_rows: a window (the bfloat16 screen) needs isa 'avx512' and "
                          "cpu_screen_available()");
  }
  refmatch::TopkCounts total{0, 0};
#ifdef REFMATCH_CPU_TOPK
  const refmatch::TopkBlock block{reinterpret_cast<const float*>(query), rows, dim,
                                  reinterpret_cast<const float*>(reference), refs,
                                  reinterpret_cast<const float*>(bias), alpha, first_index, k,
                                  reinterpret_cast<float*>(state_score), reinterpret_cast<int32_t*>(state_index),
                                  reinterpret_cast<const float*>(window)};
  auto update = isa == "avx512" ? refmatch::cpu_topk_rows_avx512 : refmatch::cpu_topk_rows_avx2;
#ifdef REFMATCH_CPU_SCREEN
  if (window != 0) update = refmatch::cpu_topk_rows_avx512_bf16;
#endif
  // A part per thread: each packs every reference sub-block again (more parts, 8 at 8192 x 16384 x 64
  // on 2 threads, took 56 ms against 52); and at least kPartRows rows a part, for the same reason.
  constexpr int64_t kPartRows = 64;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, (end - begin) / kPartRows));
  std::vector<refmatch::TopkCounts> counts(parts, refmatch::TopkCounts{0, 0});
  {
    py::gil_scoped_release released;
    refmatch::run_parts(parts, threads, [&](int64_t part) {
      counts[part] = update(block, begin + (end - begin) * part / parts, begin + (end - begin) * (part + 1) / parts);
    });
  }
  for (const auto& part : counts) total = {total.vectors + part.vectors, total.float32 + part.float32};
#endif
  return {total.vectors, total.float32};
}

}  // namespace

void bind_cpu_passes(py::module_& m) {
  m.def("cpu_topk_isas", &cpu_topk_isas,
        "Vector widths of the CPU fused top-k that this build holds and this CPU runs, widest first.");
  m.def("cpu_screen_available", &cpu_screen_available,
        "Whether this build and CPU run the CPU fused top-k's bfloat16 screen (AVX-512 with AVX512_BF16).");
  m.def("cpu_topk_rows", &cpu_topk_rows, py::arg("isa"), py::arg("query"), py::arg("rows"), py::arg("dim"),
        py::arg("reference"), py::arg("refs"), py::arg("bias"), py::arg("alpha"), py::arg("first_index"),
        py::arg("k"), py::arg("state_score"), py::arg("state_index"), py::arg("begin"), py::arg("end"),
        py::arg("window") = 0, py::arg("threads") = 1,
        "CPU fused top-k (float32) of query rows [begin, end) of [rows, dim] against a block of references "
        "[refs, dim] (contiguous, indices from first_index): score = alpha * q.r + bias (float32 [refs], or 0 for "
        "none), merged into the sorted lists state_score float32 / state_index int32 [rows, k]; on up to threads "
        "threads, no GIL held. window: float32 [rows] bounds on |bfloat16 - float32 score| (the screen: the same "
        "results), or 0. Returns the (row, vector of references) pairs visited and those of them scored in float32.");
  m.def("attach_openmp_team", &refmatch::attach_openmp_team, py::arg("library"),
        "Run CPU passes on the team of the OpenMP runtime torch's calls bind to: the global scope's "
        "GOMP_parallel, else one among the dependencies of `library` (torch's loaded extension module); "
        "whether found.");
  m.def("detach_openmp_team", &refmatch::detach_openmp_team,
        "Run CPU passes on threads started per call (a forked child).");
  m.def("openmp_team_library", &refmatch::openmp_team_library,
        "The file of the OpenMP runtime CPU passes run on, or '' where they start their own threads.");
}
