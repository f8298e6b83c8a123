"""How the benchmark measures: timed runs, and the extra memory a call takes at its peak."""
import ctypes
import os
import threading
import time

import torch


def timed(fn, device, repeat):
    """Seconds of each of ``repeat`` runs (the caller has warmed ``fn`` up)."""
    return [_seconds(fn, device) for _ in range(repeat)]


def timed_against(fn, baseline, device, repeat):
    """(seconds of each of ``repeat`` runs of ``fn``, seconds of the run of ``baseline`` right
    before each). Interleaved, so that a host whose speed drifts during the benchmark (a
    shared CPU machine, a GPU's clocks) moves both alike; both warmed up by the caller."""
    times, baseline_times = [], []
    for _ in range(repeat):
        baseline_times.append(_seconds(baseline, device))
        times.append(_seconds(fn, device))
    return times, baseline_times


def _seconds(fn, device):
    if device != "cuda":
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


class PeakMemory:
    """Extra memory a block of code takes at its peak, in MiB: the CUDA allocator's
    peak on GPUs; on the CPU the resident set, sampled every millisecond."""

    def __init__(self, device):
        self.device, self.peak_mib = device, 0.0

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._done.is_set():
            self._peak = max(self._peak, self._rss())
            self._done.wait(0.001)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _release_freed_memory()  # else memory freed by earlier methods is reused unseen
            self._base = self._peak = self._rss()
            self._done = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._done.set()
            self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_mib = (peak - self._base) / 2**20


def _release_freed_memory():
    """Hand memory the process freed back to the system (glibc), so the resident set
    shows what a method newly takes."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may then read low
        pass
