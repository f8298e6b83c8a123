"""Builds refmatch._C through CMake; the package installs without it.

Environment:
  REFMATCH_CUDA=0/1           force the CUDA kernels off/on (default: on when nvcc is found)
  REFMATCH_CUDA_ARCHS="80;90a" CUDA architectures (90a: with the Hopper wgmma kernel)
  REFMATCH_REQUIRE_EXTENSION=1  fail the install when _C cannot be built (CI, GPU suite)

A failed optional build removes any earlier _C beside the package (it would be imported
silently) and leaves the reason in refmatch/_C_build_failed.txt, which `refmatch info` shows:
pip prints build output only with -v.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ROOT = Path(__file__).resolve().parent
BUILD_FAILED = "_C_build_failed.txt"  # beside the package's modules; read by the cuda backend


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def switch(name):
    """Environment variable ``name`` as True/False ("1"/"0"), None where unset; any other value
    stops the install (a "true" read as "not 1" was silently off)."""
    flag = os.environ.get(name)
    if flag not in (None, "0", "1"):
        raise SystemExit(f"{name} must be 0 or 1, got {flag!r}")
    return None if flag is None else flag == "1"


def cuda_requested():
    flag = switch("REFMATCH_CUDA")
    if flag is None:
        return find_nvcc() is not None
    if flag and find_nvcc() is None:
        raise SystemExit("REFMATCH_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
    return flag


def cuda_archs():
    """REFMATCH_CUDA_ARCHS as CMake takes it, checked: compute capabilities of 8.0 and up
    (cp.async, bf16 mma), a trailing "a" for arch-specific features (90a: wgmma)."""
    archs = os.environ.get("REFMATCH_CUDA_ARCHS", "80;90a")
    entries = [entry.strip() for entry in archs.split(";") if entry.strip()]
    bad = [entry for entry in entries if not re.fullmatch(r"\d+a?", entry) or int(entry.rstrip("a")) < 80]
    if bad or not entries:
        raise SystemExit(f"REFMATCH_CUDA_ARCHS must be ';'-separated compute capabilities >= 80, e.g. "
                         f"\"80;90a\" (90a: the Hopper wgmma kernel), got {archs!r}")
    refused = {entry: why for entry in entries if (why := nvcc_refuses(entry))}
    if refused:  # else nvcc fails deep in the optional build, and the install reports success
        raise SystemExit(f"REFMATCH_CUDA_ARCHS: {find_nvcc()} cannot compile for {', '.join(refused)} "
                         f"({next(iter(refused.values()))}; it compiles for {', '.join(nvcc_archs()) or '?'}, "
                         f"and an 'a' entry only where the card has arch-specific features, as 90a), got {archs!r}")
    return ";".join(entries)


def nvcc_refuses(entry):
    """nvcc's complaint about compiling for ``entry`` ("86", "90a"), or None: a dry run, which
    checks the architecture without compiling ("a" entries too, which --list-gpu-arch omits)."""
    command = [find_nvcc(), "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull,
               "-gencode", f"arch=compute_{entry},code=sm_{entry}"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None  # nvcc cannot be asked: the build itself will say
    complaint = [line.strip() for line in (run.stderr + run.stdout).splitlines() if line.strip()]
    return None if run.returncode == 0 else (complaint or [f"exit status {run.returncode}"])[-1]


def nvcc_archs():
    """The compute capabilities nvcc lists ("80", "90", ...); empty where it cannot say."""
    try:
        listing = subprocess.run([find_nvcc(), "--list-gpu-arch"], capture_output=True, text=True, check=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"compute_(\d+)", listing)


def package_version():
    scope = {}
    exec((ROOT / "refmatch" / "version.py").read_text(), scope)
    return scope["__version__"]


class CMakeExtension(Extension):
    def __init__(self, name):
        # optional: a failed build leaves a working pure-Python install.
        super().__init__(name, sources=[], optional=not switch("REFMATCH_REQUIRE_EXTENSION"))


class CMakeBuild(build_ext):
    def run(self):
        # build_ext.run() builds with inplace off and copies a built module into the source
        # tree afterwards (editable installs, --inplace); a failed build must be noted there too.
        self.into_source = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()

    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        package_dirs = [out_dir] + ([ROOT / "refmatch"] if self.into_source else [])
        archs = cuda_archs() if cuda_requested() else None  # bad settings stop the install, first
        try:
            self._cmake_build(out_dir, archs)
        except (ImportError, OSError, subprocess.CalledProcessError) as error:
            for folder in package_dirs:
                for stale in folder.glob("_C.*"):  # an earlier build would be imported silently
                    stale.unlink()
                folder.mkdir(parents=True, exist_ok=True)
                (folder / BUILD_FAILED).write_text(f"{error}\n")
            raise CompileError(f"refmatch._C was not built ({error})") from error
        for folder in package_dirs:
            (folder / BUILD_FAILED).unlink(missing_ok=True)

    def _cmake_build(self, out_dir, archs):
        import pybind11

        cmake = shutil.which("cmake")
        if cmake is None:
            raise OSError("cmake not found")
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DREFMATCH_VERSION={package_version()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if archs:
            args += ["-DREFMATCH_CUDA=ON", f"-DREFMATCH_CUDA_ARCHS={archs}",
                     f"-DCMAKE_CUDA_COMPILER={find_nvcc()}"]
        else:  # said, not left out: an earlier build's CMakeCache.txt in the tree would keep CUDA on
            args.append("-DREFMATCH_CUDA=OFF")
        if shutil.which("ninja"):
            args.append("-GNinja")
        run_step("configure", [cmake, "-S", str(ROOT), "-B", str(build_dir), *args])
        run_step("build", [cmake, "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)])


def run_step(step, command):
    """Runs a CMake step, echoing its output (pip shows it with -v); a failure raises an OSError
    with the first error line, which the failure note keeps (the exit status alone said nothing)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    first_error, last = None, "no output"
    for line in process.stdout:
        sys.stdout.write(line)
        last = line.strip() or last
        # a link error's own line ("ld: cannot find -lcudart") comes before collect2's "error: ld returned 1"
        if first_error is None and re.search(r"\berror\b|\bfatal\b|\bld: |undefined reference", line, re.IGNORECASE):
            first_error = line.strip()
    if process.wait():
        raise OSError(f"the CMake {step} step failed (exit {process.returncode}): {first_error or last}")


setup(ext_modules=[CMakeExtension("refmatch._C")], cmdclass={"build_ext": CMakeBuild})
