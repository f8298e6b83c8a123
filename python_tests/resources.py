"""Register and stack usage of compiled GPU code, read with cuobjdump (no GPU needed)."""
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def cuobjdump():
    """cuobjdump from the PATH or from the nvidia-cuda-cuobjdump wheel (test extra); skips
    the test without it, and fails it in CI, where a skip would hide spills."""
    found = shutil.which("cuobjdump")
    spec = importlib.util.find_spec("nvidia")
    roots = (spec.submodule_search_locations or []) if spec and not found else []
    found = found or next((str(path) for root in roots for path in sorted(Path(root).glob("cu*/bin/cuobjdump"))),
                          None)
    if found is None:
        message = "cuobjdump not found (pip install nvidia-cuda-cuobjdump, in the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def resource_usage(binary):
    """{(arch, function): {"REG": n, "STACK": n, "LOCAL": n, ...}} of a module or cubin."""
    text = subprocess.run([cuobjdump(), "--dump-resource-usage", str(binary)], capture_output=True, text=True,
                          check=True).stdout
    resources, arch, function = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        elif line.startswith("Function "):
            function = line[len("Function "):].rstrip(":")
        elif function and line.startswith("REG:"):
            resources[(arch, function)] = {k: int(v) for k, v in re.findall(r"(\w+)(?:\[\d+\])?:(\d+)", line)}
            function = None
    return resources


def assert_no_spills(name, usage):
    report = f"{name}: {usage}"
    assert usage["STACK"] == 0 and usage["LOCAL"] == 0, f"spills to local memory: {report}"
    assert usage["REG"] <= 255, report
