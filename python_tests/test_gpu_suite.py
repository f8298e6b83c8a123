"""bench/gpu_suite.sh, which only a lent GPU machine runs, once a session: its shell parses, its
test list is complete, and a dry run with stand-ins for nvidia-smi, ncu and compute-sanitizer
passes each check's verdict on to the later stages as the GPU run would."""
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"

NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *name,compute_cap*) printf 'name, compute_cap\\nNVIDIA H200, 9.0\\n' ;;
  *compute_cap*) echo 9.0 ;;
  *name*) echo "NVIDIA H200" ;;
esac
"""
RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$TOOL_LOG"
"""


def test_gpu_suite_parses_and_its_test_list_names_every_gpu_test_file():
    """The lent GPU runs the suite once: a shell error, a renamed test file or a GPU test file left
    out of its list (a file that uses CUDA tensors or the cuda mark) would only show there."""
    assert subprocess.run(["bash", "-n", str(SUITE)]).returncode == 0
    listed = set(re.findall(r"python_tests/(test_\w+\.py)", SUITE.read_text()))
    assert listed and all((ROOT / "python_tests" / name).exists() for name in listed)
    uses_gpu = {path.name for path in (ROOT / "python_tests").glob("test_*.py")
                if re.search(r"HAS_CUDA|mark\.cuda|device=\"cuda\"|import .*\b(DEVICE|FUSED|BACKENDS)\b",
                             path.read_text())}  # conftest's DEVICE is cuda on a GPU
    # test_cuda_build: CI's checks of the build; this file: the pattern above
    assert uses_gpu - {"test_cuda_build.py", "test_gpu_suite.py"} <= listed, uses_gpu - listed


def dry_run(tmp_path, stages):
    """Runs the suite on a copy of bench/ (its logs stay out of the repository) with ``stages``;
    the wgmma checks run for real and find no GPU (a pass), ncu and compute-sanitizer only record
    their command lines. Returns (exit code, stdout, the logs folder, the recorded commands)."""
    pytest.importorskip("refmatch._C", reason="the suite refuses STAGES without build where _C does not import")
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "bench", root / "bench", ignore=shutil.ignore_patterns("results", "__pycache__"))
    (root / "bench" / "results").mkdir()
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("nvidia-smi", NVIDIA_SMI), ("ncu", RECORDER), ("compute-sanitizer", RECORDER)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    out, tool_log = tmp_path / "out", tmp_path / "tools.log"
    out.mkdir()
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "OUT": str(out), "TOOL_LOG": str(tool_log),
           "STAGES": stages, "SUITE_SECONDS": "300"}
    env.pop("REFMATCH_CUDA_HOPPER", None)
    run = subprocess.run(["bash", str(root / "bench" / "gpu_suite.sh")], env=env, capture_output=True, text=True,
                         timeout=600)
    (logs,) = (root / "bench" / "results").glob("gpu_suite-NVIDIA-H200-*")
    with tarfile.open(out / "gpu_suite.tgz") as packed:  # what comes back from the device
        assert f"{logs.name}/summary.txt" in packed.getnames()
    commands = tool_log.read_text().splitlines() if tool_log.exists() else []
    return run.returncode, run.stdout, logs, commands


def test_dry_run_passes_the_checks_verdicts_to_the_later_stages(tmp_path):
    stages = "info wgmma-256-tma wgmma-tma wgmma-topk profile profile-topk synccheck"
    code, stdout, logs, commands = dry_run(tmp_path, stages)
    assert code == 0, stdout
    summary = (logs / "summary.txt").read_text()
    for stage in stages.split():
        assert re.search(rf"^{stage} +ok", summary, re.M), summary
    assert (logs / "wgmma-topk.log").read_text().count("skipped: no GPU") == 2, "both default kernels' top-k"
    profile, profile_topk, synccheck = commands  # two ncu runs: a cut second keeps the first's report
    assert profile.startswith("ncu ") and profile.endswith("profile_match.py --hopper-variants wgmma-256-tma --top-k")
    assert profile_topk.startswith("ncu ") and "SourceCounters" in profile_topk and profile_topk.endswith(
        "profile_match.py --top-k-only --top-k 8 --wgmma-top-k")
    assert synccheck.startswith("compute-sanitizer ") and synccheck.endswith(
        "sanitize_match.py --backends cuda --hopper-variants wgmma-256-tma wgmma-tma --wgmma-top-k")


def test_dry_run_counts_a_check_not_run_as_not_passed(tmp_path):
    """Without the wgmma checks in STAGES the later stages leave the wgmma kernel out."""
    code, stdout, logs, commands = dry_run(tmp_path, "synccheck")
    assert code == 0, stdout
    assert "wgmma-topk" not in (logs / "summary.txt").read_text()  # not wanted: not listed as skipped either
    (synccheck,) = commands
    assert synccheck.endswith("sanitize_match.py --backends cuda --hopper-variants")
