"""The guard that makes an xdist worker with a broken CUDA context leave (cuda_worker_guard)."""
import sys
from pathlib import Path

import pytest

import cuda_worker_guard

pytest_plugins = ["pytester"]

# The inner run stands in for a broken context on any machine.
INNER_CONFTEST = """
import cuda_worker_guard
cuda_worker_guard.cuda_context_lost = lambda: {lost}
"""
INNER_TESTS = """
def test_breaks_the_context():
    assert False, "kernel fault"

def test_after():
    pass
"""


def run_inner(pytester, monkeypatch, lost, worker):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent), prepend=":")
    if worker:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    else:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makeconftest(INNER_CONFTEST.format(lost=lost))
    pytester.makepyfile(INNER_TESTS)
    return pytester.runpytest_subprocess("-p", "cuda_worker_guard", "-p", "no:cacheprovider")


def test_worker_leaves_after_the_test_that_broke_its_context(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, lost=True, worker=True)
    assert result.ret == cuda_worker_guard.EXIT_STATUS
    result.stderr.fnmatch_lines(["*test_breaks_the_context (call) broke the CUDA context of worker gw3*",
                                 "*kernel fault*"])
    result.stdout.no_fnmatch_line("*1 passed*")  # test_after never ran in this worker


@pytest.mark.parametrize("lost, worker", [(False, True), (True, False)])
def test_others_run_on(pytester, monkeypatch, lost, worker):
    # A failure that leaves the context usable, and any run without xdist, go on as before.
    result = run_inner(pytester, monkeypatch, lost=lost, worker=worker)
    result.assert_outcomes(failed=1, passed=1)


def test_no_context_to_lose_without_cuda():
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        pytest.skip("a GPU is here: its context may be live")
    assert not cuda_worker_guard.cuda_context_lost()
