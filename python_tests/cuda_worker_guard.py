"""pytest plugin: a pytest-xdist worker whose CUDA context a test broke leaves at once.

A kernel fault (an illegal instruction, a misaligned or out-of-bounds access) is sticky:
every later CUDA call of the process fails. Under xdist the worker would then report
every test it still runs as an error (gpu_suite.sh, session 22: one failed test, 209
errors after it). Leaving instead makes xdist report the test as the one that crashed its
worker and start a fresh worker for the rest. Without xdist nothing changes.
"""
import os
import sys

import pytest
import torch

EXIT_STATUS = 3


def cuda_context_lost():
    """Whether this process's CUDA context is broken: synchronising raises after a fault."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return False
    try:
        torch.cuda.synchronize()
    except RuntimeError:  # torch.AcceleratorError among them
        return True
    return False


@pytest.hookimpl(trylast=True)  # after xdist's own hook has sent the report on
def pytest_runtest_logreport(report):
    if report.failed and os.environ.get("PYTEST_XDIST_WORKER") and cuda_context_lost():
        sys.stderr.write(f"\n{report.nodeid} ({report.when}) broke the CUDA context of worker "
                         f"{os.environ['PYTEST_XDIST_WORKER']}, which leaves now:\n{report.longreprtext}\n")
        sys.stderr.flush()
        os._exit(EXIT_STATUS)
