"""Randomised differential tests: random calls (``fuzz_cases``) of ``match`` and ``classwise_max``
through every backend and walk that runs here, against the float64 oracle.

Families of walks:
- cpu: the torch backend's walks, the fused one screened in bfloat16 (forced on whatever the
  size) and not, at each vector width this CPU runs, and the GEMM walk; screened and
  unscreened must agree to the bit.
- triton: the Triton kernel under TRITON_INTERPRET=1 (small cases: the interpreter is slow).
- gpu: on a CUDA device, the triton and cuda backends (on Hopper, mma.sync and wgmma, whose
  top-k is opt-in) in float32, float16 and bfloat16.

CI runs a few dozen cases per family that runs there (REFMATCH_TEST_FUZZ_FAMILIES="gpu" keeps only
those named). A longer search prints each failing seed:
    python python_tests/test_fuzz.py --minutes 10 [--family cpu] [--first-seed 1000]
and ``--family F --seed S`` reruns one with its traceback.
"""
import argparse
import os
import time
import traceback

import pytest
import torch

from conftest import HAS_CUDA, INTERPRETING, hopper_build_and_device  # first: it picks Triton's interpreter
import refmatch
from fuzz_cases import check_classwise, check_match, describe, draw_case, oracle_scores, tolerance
from refmatch.backends import cpu_topk, torch_screening
from refmatch.backends.hopper_variants import hopper_switched_off
from refmatch.backends.settings import environment

CI_CASES = {"cpu": 80, "triton": 30, "gpu": 40}


def cpu_walks():
    """(name, backend, environment) of each CPU walk of the torch backend that runs here."""
    named = [(f"fused {isa}", "torch", {"REFMATCH_CPU_TOPK": isa, "REFMATCH_BF16_SCREEN": "0"})
             for isa in cpu_topk.native_isas()]
    if cpu_topk.screen_available():
        named.insert(0, ("screened", "torch", {"REFMATCH_CPU_TOPK": "avx512", "REFMATCH_BF16_SCREEN": "1"}))
    return named + [("GEMM", "torch", {"REFMATCH_CPU_TOPK": "0", "REFMATCH_BF16_SCREEN": "0"})]


def gpu_walks():
    """(name, backend, environment) of the GPU kernels: triton, cuda as it chooses, and on a Hopper
    build and card mma.sync alone and the wgmma top-k (unless REFMATCH_TEST_HOPPER_TOPK=0; none of
    them under REFMATCH_CUDA_HOPPER=0)."""
    named = [("triton", "triton", {}), ("cuda", "cuda", {})]
    if hopper_build_and_device() and not hopper_switched_off():  # gpu_suite.sh: a failed wgmma check
        named.append(("cuda mma.sync", "cuda", {"REFMATCH_CUDA_HOPPER": "0"}))
        if os.environ.get("REFMATCH_TEST_HOPPER_TOPK", "1") == "1":
            named.append(("cuda wgmma top-k", "cuda", {"REFMATCH_CUDA_HOPPER_TOPK": "wgmma"}))
    return named


# family: (whether it runs here, its draw_case arguments, its walks)
FAMILIES = {
    "cpu": (lambda: True, {"other_dtypes": (torch.float16, torch.bfloat16, torch.float64)}, cpu_walks),
    "triton": (lambda: INTERPRETING, {"max_rows": 64, "max_refs": 400, "max_k": 64, "cosine_decades": 24},
               lambda: [("triton", "triton", {})]),
    "gpu": (lambda: HAS_CUDA, {"max_rows": 512, "max_refs": 8192, "device": "cuda", "cosine_decades": 24,
                               "depths": (5, 13, 24, 64, 72, 128, 136, 256), "ks": (1, 2, 8, 16, 64)}, gpu_walks),
}


def known_gap(case, backend):
    """The contract's known gap (docs/contract.md): the cuda backend's float32 3xTF32 makes a +inf
    dot product NaN, which never wins."""
    return (backend == "cuda" and case["metric"] == "dot" and case["query"].dtype == torch.float32
            and not (case["query"].isfinite().all() and case["reference"].isfinite().all()))


def run_case(case, walks):
    """Every walk of one case, checked; the screened CPU walk against the unscreened one to the bit."""
    saved = (torch.get_num_threads(), cpu_topk.PREPARED_BYTES, torch_screening.MIN_WORK)
    outputs = {}
    try:
        torch.set_num_threads(case["threads"])  # first: 8 pytest workers' oracles, each on every core, crowd
        exact = oracle_scores(case)
        tol = tolerance(case, exact)
        cpu_topk.PREPARED_BYTES = case["refs_per_call"] * 4 * case["reference"].shape[1]
        torch_screening.MIN_WORK = 0
        for name, backend, settings in walks:
            if known_gap(case, backend):
                continue
            with environment(settings):
                try:
                    result = refmatch.match(case["query"], case["reference"], case["labels"], k=case["k"],
                                            metric=case["metric"], backend=backend, ignore_index=case["ignore_index"])
                    check_match(result, case, exact, tol)
                    outputs[name] = (result.score, result.index)
                    if case["labels"] is not None:
                        scores = refmatch.classwise_max(case["query"], case["reference"], case["labels"],
                                                        case["num_classes"], metric=case["metric"],
                                                        backend=backend, ignore_index=case["ignore_index"])
                        check_classwise(scores, case, exact, tol)
                        outputs[name] += (scores,)
                except AssertionError as error:
                    raise AssertionError(f"{name}: {error}") from error
    finally:
        torch.set_num_threads(saved[0])
        cpu_topk.PREPARED_BYTES, torch_screening.MIN_WORK = saved[1:]
    if "screened" in outputs:
        same = all(torch.equal(a, b) for a, b in zip(outputs["screened"], outputs["fused avx512"]))
        assert same, "screened and unscreened fused walks differ"


def run_seed(family, seed):
    """Draws and runs one case of ``family``; an AssertionError names the case."""
    _, sizes, walks = FAMILIES[family]
    case = draw_case(seed, **sizes)
    try:
        run_case(case, walks())
    except AssertionError as error:
        raise AssertionError(f"{describe(case)}: {error}") from error


@pytest.mark.parametrize("family, seed", [(family, seed) for family, count in CI_CASES.items()
                                          for seed in range(count)])
def test_every_walk_agrees_with_the_oracle(family, seed):
    if not FAMILIES[family][0]():
        pytest.skip(f"the {family} walks do not run here")
    wanted = os.environ.get("REFMATCH_TEST_FUZZ_FAMILIES")  # gpu_suite.sh: "gpu", within its stage's time
    if wanted and family not in wanted.split():
        pytest.skip(f"REFMATCH_TEST_FUZZ_FAMILIES={wanted}")
    run_seed(family, seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="search this long")
    parser.add_argument("--family", choices=list(FAMILIES), action="append",
                        help="the walks to search (repeatable; default: every family that runs here)")
    parser.add_argument("--first-seed", type=int, default=max(CI_CASES.values()), help="the first seed to draw")
    parser.add_argument("--seed", type=int, help="run this seed alone, with its traceback")
    args = parser.parse_args()
    families = args.family or [family for family, (runs, _, _) in FAMILIES.items() if runs()]
    if args.seed is not None:
        for family in families:
            run_seed(family, args.seed)
        print(f"seed {args.seed} passed: {', '.join(families)}")
        return
    deadline, seed, failures, cases = time.monotonic() + 60 * args.minutes, args.first_seed, 0, 0
    next_report = time.monotonic() + 60
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:  # a line a minute: a long search shows it is alive
            minutes_left = (deadline - time.monotonic()) / 60
            print(f"{cases} cases, {failures} failed, at seed {seed}; {minutes_left:.1f} min left", flush=True)
            next_report += 60
        for family in families:
            cases += 1
            try:
                run_seed(family, seed)
            except Exception as error:  # report every kind of failure, then go on
                failures += 1
                print(f"FAIL {family} {str(error).splitlines()[0]}", flush=True)
                if not isinstance(error, AssertionError):
                    traceback.print_exc()
        seed += 1
    print(f"{cases} cases of {', '.join(families)} from seed {args.first_seed}, {failures} failed")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
