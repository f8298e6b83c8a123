"""refmatch._C built without CUDA (REFMATCH_CUDA=OFF, as on machines without nvcc)
links every declared entry point and imports; its host checks still run."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_builds_and_imports_without_cuda(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    out = tmp_path / "module"
    configure = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DREFMATCH_CUDA=OFF",
                 f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}", f"-DPython_EXECUTABLE={sys.executable}",
                 f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"]
    for command in (configure, ["cmake", "--build", str(tmp_path / "build"), "--parallel", "2"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # A stub whose signature drifted from match_cuda.h leaves an undefined symbol: the import fails.
    check = ("import sys; sys.path.insert(0, sys.argv[1]); import _C, numpy as np; "
             "assert _C.build_info()['cuda'] is False; assert _C.cuda_device_count()[0] == 0; "
             "scores, indices = _C.stream_tiles(np.eye(3, dtype=np.float32), 'wgmma', 2); "
             "assert indices[:, 0].tolist() == [0, 1, 2]")
    done = subprocess.run([sys.executable, "-c", check, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
