#!/usr/bin/env bash
# One command for a lent GPU machine (no internet, under 10 minutes; a session's device time is
# about 15 minutes in all, so this runs once). The stages run most valuable first, each under its
# own limit and SUITE_SECONDS (570) for all of them; what time cuts is listed as SKIPPED and fails:
#   build _C for this card (a failed build ends the suite) -> first checks of the Hopper wgmma
#   kernel (256 and 128 query rows per CTA, the query in shared memory or registers, the bank
#   loaded by TMA or cp.async; its opt-in top-k) -> benchmark at the target size with every
#   method -> top-8 against k = 1 -> the wgmma kernel timed with stages left out -> Triton tile
#   sweep of top-8 and class-wise (D = 128)
#   -> Nsight Compute profiles of the fused kernels, k = 1 then top-8 -> compute-sanitizer memcheck, racecheck and
#   synccheck on small cases -> the GPU test files -> KeOps, fp16, D/M sweep -> summary.
# A failing stage is recorded and the next stages still run. The default runs two
# kernels, wgmma-256-tma up to D = 192 and wgmma-tma above: a failed check of either keeps
# the wgmma kernel out of the later stages (REFMATCH_CUDA_HOPPER=0: a hang there would
# eat the budget); a failed check of another variant (-rs: query in registers; no -tma:
# cp.async loads), that variant. The -rs-tma variants are not checked, so neither tested
# nor timed.
# Peer wheels carried in .whl/ (bench/README.md) are installed first (the tests run without
# them). Logs go to bench/results/gpu_suite-<card>-<date>/ (-2, -3 ... when taken) and, when $OUT is set, come back as
# $OUT/gpu_suite.tgz, packed again after every stage (a command killed early keeps what ran).
#   SUITE_SECONDS=570   TESTS="python_tests/test_match_cuda.py ..." (pytest targets; the wgmma
#   tests run in the variants that passed their check: REFMATCH_TEST_HOPPER_VARIANTS; the wgmma
#   top-k where wgmma-topk passed: REFMATCH_TEST_HOPPER_TOPK)   TOPK_SIZES="NxMxD ..." (topk)
#   BENCH_SIZES="NxMxD ..." (every method)   SWEEP_SIZES="NxMxD ..." (fused kernels and peers)
#   STAGES="build info wgmma-256-tma ... keops fp16 sweep" (KNOWN_STAGES; a subset runs only those, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."

KNOWN_STAGES="build info wgmma-256-tma wgmma-tma wgmma-topk wgmma-256 wgmma wgmma-256-rs wgmma-rs bench topk ablate
  tune profile profile-topk memcheck racecheck synccheck tests keops fp16 sweep"
for name in ${STAGES:-}; do  # a mistyped stage would silently not run: refuse before any GPU time
  [[ " $(echo $KNOWN_STAGES) " == *" $name "* ]] || { echo "unknown stage $name; known: $(echo $KNOWN_STAGES)" >&2; exit 2; }
done

if [[ -n "${STAGES:-}" && " $STAGES " != *" build "* ]] && ! python -c "import refmatch._C" 2>/dev/null; then
  echo "STAGES leaves out build, and refmatch._C does not import here: every stage needs it" >&2
  exit 2
fi

# The logs' folder names the card (a plain call may get an H100 or an H200) and the date.
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '-' || true)
STAMP=${CARD:-unknown-card}-$(date +%Y-%m-%d)
LOGS=bench/results/gpu_suite-$STAMP
for taken in 2 3 4 5 6 7 8 9; do  # a committed folder of the same card and date stays as it is
  [[ -e $LOGS ]] && LOGS=bench/results/gpu_suite-$STAMP-$taken
done
mkdir -p "$LOGS"
STARTED=$LOGS/.started  # results files newer than this are this run's
touch "$STARTED"
export PYTHONUNBUFFERED=1  # a stage cut at its limit keeps its last lines
SUMMARY=()
FAILED=0
FAILED_STAGES=()
PASSED_STAGES=()  # a check that never ran has not passed: later stages ask passed NAME
DEADLINE=$(($(date +%s) + ${SUITE_SECONDS:-570}))  # the device tool stops a command at 600 s

wanted() { [[ " ${STAGES:-$1} " == *" $1 "* ]]; }  # wanted NAME: STAGES (or no STAGES) names it
# skipped NAME WHY: lists NAME as skipped, where wanted.
skipped() { if wanted "$1"; then SUMMARY+=("$(printf '%-10s %-16s' "$1" "SKIPPED ($2)")"); fi; }

# stage NAME SECONDS COMMAND...: runs COMMAND under min(SECONDS, time left), logs to $LOGS/NAME.log.
stage() {
  local name=$1 limit=$2 begin status left
  shift 2
  wanted "$name" || return 0
  begin=$(date +%s)
  left=$((DEADLINE - begin))
  if ((left < 15)); then
    skipped "$name" "no time"
    FAILED=1
    FAILED_STAGES+=("$name")  # a check that never ran has not passed
    return
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s): $*"
  if timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1; then  # -k: SIGKILL what ignores SIGTERM
    status=ok
    PASSED_STAGES+=("$name")
  else
    status="FAILED (exit $?)"
    FAILED=1
    FAILED_STAGES+=("$name")
  fi
  tail -n 15 "$LOGS/$name.log"
  SUMMARY+=("$(printf '%-10s %-16s %4ss' "$name" "$status" "$(($(date +%s) - begin))")")
  printf '%s\n' "${SUMMARY[@]}" >"$LOGS/summary.txt"
  pack
}

# This run's results files and logs into $OUT/gpu_suite.tgz (when $OUT is set), through a
# temporary file: a kill while packing leaves the previous tarball whole.
pack() {
  [[ -n "${OUT:-}" ]] || return 0
  find bench/results -maxdepth 1 -type f -newer "$STARTED" -exec cp {} "$LOGS"/ \;
  tar czf "$OUT/gpu_suite.tgz.part" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
  mv "$OUT/gpu_suite.tgz.part" "$OUT/gpu_suite.tgz"
}

finish() {
  echo
  echo "=== summary ($(head -n 2 "$LOGS/device.txt" | tail -n 1))"
  printf '%s\n' "${SUMMARY[@]}" | tee "$LOGS/summary.txt"
  grep -E "(FAILED|ERROR)" "$LOGS/tests.log" 2>/dev/null | grep -v "^=" | head -n 40 || true
  find bench/results -maxdepth 1 -type f -newer "$STARTED" -name "*.md"
  pack
  exit "$FAILED"
}

nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv >"$LOGS/device.txt" 2>&1 || true
python - >>"$LOGS/device.txt" 2>&1 <<'PY' || true
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
PY
git rev-parse HEAD >>"$LOGS/device.txt" 2>&1 || true
cat "$LOGS/device.txt"

TEST_PYTHONPATH=${PYTHONPATH:-}  # the tests import no peers (KeOps alone slowed test_bench 4x)
if compgen -G ".whl/*.whl" >/dev/null; then
  PEERS=$(mktemp -d -t refmatch-peers.XXXXXX)  # not a fixed /tmp name another user could plant first
  trap 'rm -rf "$PEERS"' EXIT
  python -m pip install --no-index --no-deps --no-compile --target "$PEERS" .whl/*.whl \
    >"$LOGS/peers.log" 2>&1 && export PYTHONPATH=$PEERS${PYTHONPATH:+:$PYTHONPATH}
fi
# Build for the card that is here only (e.g. "90a", with the Hopper wgmma kernel):
# half the compile time of "80;90a".
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ' || true)
[[ $ARCH == 90 ]] && ARCH=90a
export REFMATCH_CUDA_ARCHS=${REFMATCH_CUDA_ARCHS:-${ARCH:-80;90a}} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
XDIST=()
python -c "import xdist" 2>/dev/null && XDIST=(-n 8)
TEST_TIMEOUT=()  # a hung test fails alone instead of holding its worker to the stage's limit
python -c "import pytest_timeout" 2>/dev/null && TEST_TIMEOUT=(--timeout 90 --timeout-method thread)

# 1. Build: no isolation and no deps, so pip never reaches for the network.
stage build 180 env REFMATCH_REQUIRE_EXTENSION=1 REFMATCH_CUDA=1 \
  python -m pip install --no-build-isolation --no-deps --no-index -v -e .
listed() { local item=$1; shift; [[ " $* " == *" $item "* ]]; }  # listed ITEM LIST...
failed() { listed "$1" "${FAILED_STAGES[@]}"; }
passed() { listed "$1" "${PASSED_STAGES[@]}"; }
failed build && finish  # every later stage imports the editable install
stage info 30 python -m refmatch.info

# 2. The Hopper kernel's first checks, short: the default's two kernels, then each
# variant with the query in registers or the bank loaded through TMA (the same template,
# checked only once the default passed). Later stages leave out what failed its check.
for variant in wgmma-256-tma wgmma-tma; do
  stage "$variant" 60 python bench/check_wgmma.py --variant "$variant"
done
WITHOUT_WGMMA=0
WGMMA_TOPK=()  # --wgmma-top-k for the profile and sanitizer scripts, where the wgmma top-k passed its check
HOPPER_VARIANTS=()  # hopper_variants.HOPPER_VARIANTS that passed their check
EXCLUDE=(keops rs-tma)
export REFMATCH_TEST_HOPPER_TOPK=0  # until its check passes
if ! passed wgmma-256-tma || ! passed wgmma-tma; then  # failed, or not run
  WITHOUT_WGMMA=1
  export REFMATCH_CUDA_HOPPER=0
  skipped wgmma-topk "the default wgmma kernels did not pass their checks"
else
  HOPPER_VARIANTS=(wgmma-256-tma wgmma-tma)
  # Top-k on the wgmma kernel (opt-in, REFMATCH_CUDA_HOPPER_TOPK=wgmma), in the default's two
  # kernels: unless it passes, the tests, sanitizers and profile leave it out and the bench its row.
  stage wgmma-topk 90 bash -c "python bench/check_wgmma.py --variant wgmma-256-tma --top-k 8 &&
    python bench/check_wgmma.py --variant wgmma-tma --top-k 8"
  if passed wgmma-topk; then
    export REFMATCH_TEST_HOPPER_TOPK=1
    WGMMA_TOPK=(--wgmma-top-k)
  fi
  for variant in wgmma-256 wgmma wgmma-256-rs wgmma-rs; do
    # wgmma-256-rs runs wgmma-256's kernel from D = 72 to 192 and wgmma-rs's above, wgmma-256
    # wgmma's above D = 192 (the tests skip a D whose kernel did not pass its check)
    stage "$variant" 60 python bench/check_wgmma.py --variant "$variant"
    if passed "$variant"; then
      HOPPER_VARIANTS+=("$variant")
    else
      EXCLUDE+=("$variant ")  # the bench method name holding it: "cuda wgmma-256-rs k=1"
    fi
  done
fi
passed wgmma-topk || EXCLUDE+=(wgmma-topk)

# The wgmma variants whose time the ablate and profile stages place: the default and its
# cp.async form (issue #3's question), where they passed their checks.
passed_checks() {  # passed_checks VARIANT...: those of them in HOPPER_VARIANTS, one a line
  local variant
  for variant; do if listed "$variant" "${HOPPER_VARIANTS[@]}"; then echo "$variant"; fi; done
}
PROFILED=($(passed_checks wgmma-256-tma wgmma-256))

# 3. The issues' target size with every method (one results file, rewritten after every row:
# a stage cut off at its limit keeps what it measured); then the wgmma kernel with stages left
# out, and the Triton tile sweep of the reductions still short of #4's targets, at D = 128, with
# k = 1 on top-8's tile (it splits top-8's cost into its tile's and its epilogue's).
BENCH=(python bench/bench_match.py --device cuda)
stage bench 180 "${BENCH[@]}" --dtype bfloat16 --sizes ${BENCH_SIZES:-262144x1048576x128} --exclude "${EXCLUDE[@]}"
# Issue #4's top-8 against k = 1 (dot, paired runs) for every fused top-8, the wgmma one included.
stage topk 150 "${BENCH[@]}" --dtype bfloat16 --sizes ${TOPK_SIZES:-262144x1048576x128 262144x1048576x64} \
  --only "cuda k=" "triton k=" wgmma-topk --exclude "${EXCLUDE[@]}" --tag topk
# Where the default wgmma kernel's time goes, and its TMA form's: each timed whole, without its
# epilogue, without its loads, and with neither (no hardware counters needed).
stage ablate 60 python bench/ablate_wgmma.py --variants "${PROFILED[@]}"
stage tune 130 python bench/tune_triton.py --sizes 262144x1048576x128 --reductions top-8 argmax-topk-tile classwise-4

# 4. Where each fused kernel's time goes: Nsight Compute sections with the stalls by instruction
# (SourceCounters), one launch each: the k = 1 kernels, of the wgmma variants the default and its
# cp.async form (PROFILED, as the ablate stage); then, in a second ncu whose cut would not lose
# the first's report (ncu prints every section at its end), the top-8 kernels, Triton's and
# cuda's (mma.sync; wgmma where it passed its check).
NCU=(ncu --clock-control none -k "regex:match_kernel|match_sm90_kernel" --section SpeedOfLight
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats
  --section SchedulerStats --section Occupancy --section LaunchStats --section SourceCounters)
stage profile 75 "${NCU[@]}" python bench/profile_match.py --hopper-variants "${PROFILED[@]}" --top-k
stage profile-topk 75 "${NCU[@]}" python bench/profile_match.py --top-k-only --top-k 8 "${WGMMA_TOPK[@]}"

# 5. Sanitizers on small cases; no caching allocator, so reads past a tensor's end are caught.
SANITIZE=(compute-sanitizer --error-exitcode 1 --print-limit 20)
stage memcheck 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${SANITIZE[@]}" --tool memcheck \
  python bench/sanitize_match.py --hopper-variants "${HOPPER_VARIANTS[@]}" "${WGMMA_TOPK[@]}"
# racecheck is the slowest sanitizer: the default's two kernels only, without the mma.sync cases
# (race-checked in sessions 3, 5 and 14; 150 s with them reached one of six wgmma variants).
RACECHECKED=($(passed_checks wgmma-256-tma wgmma-tma))
RACE_BACKENDS=()  # none: the wgmma kernels alone; where they failed their checks, the mma.sync cases
((${#RACECHECKED[@]})) || RACE_BACKENDS=(cuda)
stage racecheck 200 "${SANITIZE[@]}" --tool racecheck \
  python bench/sanitize_match.py --backends "${RACE_BACKENDS[@]}" --hopper-variants "${RACECHECKED[@]}" \
  "${WGMMA_TOPK[@]}"
# Warp-synchronous calls (__shfl_sync, __syncwarp) reached by every lane they name: the top-k turns.
stage synccheck 90 "${SANITIZE[@]}" --tool synccheck \
  python bench/sanitize_match.py --backends cuda --hopper-variants "${HOPPER_VARIANTS[@]}" "${WGMMA_TOPK[@]}"

# 6. The test files that run on a GPU (CI runs the rest, CPU-only), one line per test as it ends.
# A test that breaks its worker's CUDA context ends that worker, and xdist starts a fresh one
# (python_tests/cuda_worker_guard.py): one crashed test, not every test after it.
GPU_TESTS=(python_tests/test_match_cuda.py python_tests/test_match_cuda_sm90.py python_tests/test_match_cuda_topk.py
  python_tests/test_match_triton.py python_tests/test_triton_launch.py python_tests/test_triton_class_ranges.py
  python_tests/test_match_contract.py python_tests/test_match_tracing.py python_tests/test_classwise.py
  python_tests/test_ignore_index.py python_tests/test_match_inputs.py python_tests/test_backend_choice.py
  python_tests/test_cuda_kernel_choice.py
  python_tests/test_native.py python_tests/test_fuzz.py
  "python_tests/test_recipes.py::test_resume_continues_the_run[cuda]")
[[ -z "${TESTS:-}" ]] || GPU_TESTS=($TESTS)  # split and glob-expanded (the list's [cuda] stays literal)
if ((WITHOUT_WGMMA)); then  # pytest would still collect a file named here that --ignore names
  for i in "${!GPU_TESTS[@]}"; do [[ ${GPU_TESTS[$i]} == *test_match_cuda_sm90.py ]] && unset "GPU_TESTS[$i]"; done
fi
if ((${#GPU_TESTS[@]})); then  # an empty list would make pytest collect every test file
  stage tests 240 env PYTHONPATH="$TEST_PYTHONPATH" REFMATCH_TEST_HOPPER_VARIANTS="${HOPPER_VARIANTS[*]}" \
    REFMATCH_TEST_FUZZ_FAMILIES=gpu \
    python -m pytest "${GPU_TESTS[@]}" "${XDIST[@]}" "${TEST_TIMEOUT[@]}" -v -p no:warnings -rfs --tb=short \
    --durations=15
else
  skipped tests "no test file left"
fi

# 7. The D and M sweeps and fp16 without the torch backend (10-50x slower, measured at the
# target size) nor the cuda kernel's other variants (timed at the target size by bench; with
# them, 150 s covered two of five sizes). The sweep's default: the sizes no run has measured
# yet (D = 64 and M = 64K at D = 128: session 23), M = 4M last, as the slowest. KeOps computes
# in float32 and crashed twice (SIGSEGV generating its code): in float32, in its own process (a
# crash of its probe child: a skipped row), and only where its wheels were carried.
# The sweep runs last: it keeps every size it finished when the deadline cuts it.
# One size, against cuda's k = 1 (float32's fastest here): its oracle, KeOps' first compile and
# the rows before it took most of 90 s (session 23's was cut in its oracle).
if compgen -G ".whl/pykeops-*.whl" >/dev/null; then  # its import (nvrtc binder) runs in the stage, timed
  stage keops 150 "${BENCH[@]}" --dtype float32 --sizes 262144x1048576x64 --only keops "cuda k=1" --tag keops
else
  skipped keops "no pykeops wheel in .whl/"
fi
FUSED_ONLY=(--exclude "${EXCLUDE[@]}" torch "cuda wgmma" mma.sync)
stage fp16 90 "${BENCH[@]}" --dtype float16 --sizes 262144x1048576x128 "${FUSED_ONLY[@]}"
SWEEP_SIZES=${SWEEP_SIZES:-262144x1048576x32 262144x1048576x256 262144x4194304x128}
stage sweep 240 "${BENCH[@]}" --dtype bfloat16 --sizes $SWEEP_SIZES "${FUSED_ONLY[@]}" --tag sweep

finish
