"""Without cmake or a compiler the package still installs, on its Python backends."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_wheel_builds_without_cmake(tmp_path):
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source, capture_output=True, text=True, env={"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(tmp_path.glob("refmatch_kernels-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {name for name in tracked if name.startswith("refmatch/") and name.endswith(".py")}
    sources |= {"refmatch/" + name for name in tracked if name.startswith("kernels/") and name.endswith(".py")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert not any(name.startswith("refmatch/_C") for name in names)
