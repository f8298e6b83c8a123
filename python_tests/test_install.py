"""Without cmake or a compiler the package still installs, on its Python backends; a failed
build says why, and a bad architecture list stops it."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def copy_checkout(target):
    """The tracked files of the checkout copied to ``target``; their names."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return tracked


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_wheel_builds_without_cmake(tmp_path):
    source = tmp_path / "src"
    tracked = copy_checkout(source)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source, capture_output=True, text=True, env={"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(tmp_path.glob("refmatch_kernels-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {name for name in tracked if name.startswith("refmatch/") and name.endswith(".py")}
    sources |= {"refmatch/" + name for name in tracked if name.startswith("kernels/") and name.endswith(".py")}
    sources |= {"refmatch/" + name for name in tracked if name.startswith("configs/")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert not any(name.startswith("refmatch/_C.") for name in names)
    assert "refmatch/_C_build_failed.txt" in names, "the reason ships with the wheel"
    assert "refmatch/py.typed" in names, "type checkers read the public API's annotations"


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_the_sdist_carries_what_the_build_needs(tmp_path):
    """Without MANIFEST.in it held no csrc/ nor CMakeLists.txt: installed from it, _C was not built."""
    import tarfile

    source = tmp_path / "src"
    tracked = copy_checkout(source)
    build = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=source,
                           capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)})
    assert build.returncode == 0, build.stdout + build.stderr
    with tarfile.open(next(tmp_path.glob("refmatch_kernels-*.tar.gz"))) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    needed = {name for name in tracked if name.startswith(("csrc/", "configs/", "kernels/", "refmatch/"))}
    assert needed | {"CMakeLists.txt", "setup.py", "pyproject.toml"} <= names, sorted(needed - names)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_a_failed_build_removes_the_old_module_and_says_why(tmp_path):
    """pip hides build output without -v: a failed optional build must not leave an earlier _C to be
    imported silently, and leaves its reason where the cuda backend's status reads it."""
    source = tmp_path / "src"
    copy_checkout(source)
    package = tmp_path / "lib" / "refmatch"
    package.mkdir(parents=True)
    stale = package / "_C.cpython-311-x86_64-linux-gnu.so"
    stale.write_bytes(b"an earlier build")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib")],
                           cwd=source, capture_output=True, text=True,
                           env={"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})
    assert build.returncode == 0, build.stdout + build.stderr  # optional: the install goes on
    assert not stale.exists()
    reason = (package / "_C_build_failed.txt").read_text()
    assert "cmake not found" in reason or "pybind11" in reason, reason  # whichever is missing first


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_a_failed_in_place_build_notes_it_in_the_source_tree(tmp_path):
    """Editable installs and --inplace build elsewhere and copy a built module into refmatch/
    afterwards: a failed build must clear the old module there and leave its note there."""
    source = tmp_path / "src"
    copy_checkout(source)
    stale = source / "refmatch" / "_C.cpython-311-x86_64-linux-gnu.so"
    stale.write_bytes(b"an earlier build")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=source, capture_output=True,
                           text=True, env={"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)})
    assert build.returncode == 0, build.stdout + build.stderr
    assert not stale.exists() and (source / "refmatch" / "_C_build_failed.txt").is_file()


RULE = "REFMATCH_CUDA_ARCHS must be ';'-separated compute capabilities >= 80"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (REFMATCH_CUDA=1 asks for it first)")
@pytest.mark.parametrize("archs, message", [
    ("sm_80", RULE), ("75;90a", RULE), ("", RULE),
    # they passed the rule, failed deep in the optional build, and the install reported success
    ("860", "cannot compile for 860 (nvcc fatal"), ("80;95", "cannot compile for 95 (nvcc fatal"),
    ("80a;90a", "cannot compile for 80a (nvcc fatal")])  # --list-gpu-arch names no "a" entry
def test_bad_cuda_archs_stop_the_build_before_it_starts(tmp_path, archs, message):
    source = tmp_path / "src"
    copy_checkout(source)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib")],
                           cwd=source, capture_output=True, text=True,
                           env={**os.environ, "REFMATCH_CUDA": "1", "REFMATCH_CUDA_ARCHS": archs})
    assert build.returncode != 0 and message in build.stderr, build.stderr


@pytest.mark.parametrize("name", ["REFMATCH_REQUIRE_EXTENSION", "REFMATCH_CUDA"])
def test_switches_other_than_0_or_1_stop_the_build(tmp_path, name):
    """REFMATCH_REQUIRE_EXTENSION=true was read as "not 1": a failed build went unnoticed."""
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib")],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, name: "true"})
    assert build.returncode != 0 and f"{name} must be 0 or 1, got 'true'" in build.stderr


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_the_failure_note_names_the_first_error_line(tmp_path):
    """The note held only "returned non-zero exit status 1" and temporary paths."""
    source = tmp_path / "src"
    copy_checkout(source)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "cmake").write_text("#!/bin/sh\necho '-- configuring'\necho 'CMake Error at CMakeLists.txt:3: boom'\n"
                                 "echo '-- done'\nexit 1\n")
    (tools / "cmake").chmod(0o755)
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib")],
                           cwd=source, capture_output=True, text=True,
                           env={"PATH": f"{tools}:{os.path.dirname(shutil.which('sh'))}", "HOME": str(tmp_path),
                                "REFMATCH_CUDA": "0"})
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "lib" / "refmatch" / "_C_build_failed.txt").read_text() == \
        "the CMake configure step failed (exit 1): CMake Error at CMakeLists.txt:3: boom\n"
