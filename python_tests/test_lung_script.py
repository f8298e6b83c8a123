"""scripts/lung_experiment.sh trains the four runs of a seed with one normalisation, in the folder
that names it, and refuses an unknown NORM (refmatch and python are stand-ins that log their calls)."""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "lung_experiment.sh"


def run_script(tmp_path, *arguments, norm=None):
    stand_ins, calls = tmp_path / "bin", tmp_path / "calls"
    stand_ins.mkdir(exist_ok=True)
    for name in ("refmatch", "python"):
        (stand_ins / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        (stand_ins / name).chmod(0o755)
    environment = {**os.environ, "PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("NORM", None)
    if norm:
        environment["NORM"] = norm
    done = subprocess.run(["bash", str(SCRIPT), *arguments], env=environment, capture_output=True, text=True)
    return done, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("norm, folder", [(None, "runs/lung_seed97"), ("batch", "runs/lung_batchnorm_seed97")])
def test_all_four_runs_take_the_norm_and_its_folder(tmp_path, norm, folder):
    done, calls = run_script(tmp_path, "97", "6", "pl_k=8", norm=norm)
    assert done.returncode == 0, done.stderr
    trains = [call for call in calls if call.startswith("refmatch train")]
    expected = "batch" if norm else "instance"
    assert len(trains) == 4 and all(f"seed=97 norm={expected} --out {folder}/" in call for call in trains)
    assert [call.split("--out ")[1].split()[0] for call in trains] == [
        f"{folder}/supervised_n6", f"{folder}/meanteacher_n6", f"{folder}/refmatch_n6_pl_k-8",
        f"{folder}/supervised_100pct"]
    assert "pl_k=8" in trains[2] and not any("pl_k" in call for call in trains[:2] + trains[3:])
    assert calls[-1].startswith("python -m refmatch.recipes.report")


def test_an_unknown_norm_is_refused_before_any_run(tmp_path):
    done, calls = run_script(tmp_path, "97", norm="group")
    assert done.returncode == 2 and "NORM=group: use instance or batch" in done.stderr and calls == []
