"""scripts/lung_experiment.sh trains the four runs of a seed of one task (lungs, or right and left
lung) with one normalisation, in the folder that names both, reports them and every seed finished
so far, and refuses an unknown TASK or NORM. It runs from a copy in a scratch folder, with
stand-ins for refmatch and python that log their calls."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "lung_experiment.sh"
NAMES = ["supervised_n6", "meanteacher_n6", "refmatch_n6_pl_k-8", "supervised_100pct"]


def run_script(tmp_path, *arguments, norm=None, task=None):
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(SCRIPT, tmp_path / "scripts")
    stand_ins, calls = tmp_path / "bin", tmp_path / "calls"
    stand_ins.mkdir(exist_ok=True)
    for name in ("refmatch", "python"):
        (stand_ins / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        (stand_ins / name).chmod(0o755)
    environment = {**os.environ, "PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}"}
    for name, value in (("NORM", norm), ("TASK", task)):
        environment.pop(name, None)
        if value:
            environment[name] = value
    done = subprocess.run(["bash", str(tmp_path / "scripts" / SCRIPT.name), *arguments], env=environment,
                          capture_output=True, text=True)
    return done, calls.read_text().splitlines() if calls.exists() else []


def finish(run):
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {}}))


FOLDERS = ["runs/lung_seed", "runs/lung_batchnorm_seed", "runs/lung_sides_seed", "runs/lung_sides_batchnorm_seed"]


@pytest.mark.parametrize("task, norm, folder, config", [
    (None, None, "runs/lung_seed", "configs/lung_cpu.yaml"),
    (None, "batch", "runs/lung_batchnorm_seed", "configs/lung_cpu.yaml"),
    ("sides", None, "runs/lung_sides_seed", "configs/lung_sides_cpu.yaml"),
    ("sides", "batch", "runs/lung_sides_batchnorm_seed", "configs/lung_sides_cpu.yaml")])
def test_all_four_runs_take_the_task_and_norm_and_their_folder(tmp_path, task, norm, folder, config):
    for name in NAMES:  # seed 96 finished earlier, in every folder
        for finished in FOLDERS:
            finish(tmp_path / f"{finished}96" / name)
    finish(tmp_path / f"{folder}96" / "refmatch_n6")  # another setting's run: not in the report
    done, calls = run_script(tmp_path, "97", "6", "pl_k=8", norm=norm, task=task)
    assert done.returncode == 0, done.stderr
    trains = [call for call in calls if call.startswith("refmatch train")]
    expected = "batch" if norm else "instance"
    assert len(trains) == 4 and all(f"--config {config} seed=97 norm={expected} --out {folder}97/" in call
                                    for call in trains)
    assert [call.split("--out ")[1].split()[0] for call in trains] == [f"{folder}97/{name}" for name in NAMES]
    assert "pl_k=8" in trains[2] and not any("pl_k" in call for call in trains[:2] + trains[3:])
    assert calls[-2] == "refmatch report " + " ".join(f"{folder}97/{name}" for name in NAMES)
    # the stand-in trains nothing, so only seed 96 has finished
    assert calls[-1] == "refmatch report --by-seed " + " ".join(f"{folder}96/{name}" for name in NAMES)


def test_an_unknown_norm_or_task_is_refused_before_any_run(tmp_path):
    done, calls = run_script(tmp_path, "97", norm="group")
    assert done.returncode == 2 and "NORM=group: use instance or batch" in done.stderr and calls == []
    done, calls = run_script(tmp_path, "97", task="heart")
    assert done.returncode == 2 and "TASK=heart: use lung or sides" in done.stderr and calls == []
