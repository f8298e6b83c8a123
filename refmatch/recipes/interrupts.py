"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM (a cluster's preemption) ends it
after the current step, with ``latest.pt`` saved, instead of losing every step since the
last checkpoint."""
import contextlib
import logging
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Inside ``catching()`` the first SIGINT or SIGTERM sets ``signal`` (its name) instead
    of stopping the process; a second SIGINT stops at once (KeyboardInterrupt). Outside
    the main thread, where Python cannot handle signals, nothing is caught."""

    def __init__(self):
        self.signal = None

    def _handle(self, number, frame):
        if self.signal is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(number).name
        logging.getLogger("refmatch").warning("%s: stopping after this step, once latest.pt is saved "
                                              "(Ctrl-C again stops at once, losing the steps since the last "
                                              "checkpoint)", self.signal)

    @contextlib.contextmanager
    def catching(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

    def raise_it(self):
        """After the run saved its state: KeyboardInterrupt for SIGINT, exit status 143 for SIGTERM."""
        if self.signal == "SIGINT":
            raise KeyboardInterrupt
        if self.signal is not None:
            raise SystemExit(128 + signal.SIGTERM)


def worker_ignores_stop_signals(worker_id):
    """``worker_init_fn`` of the recipe's DataLoaders. A Ctrl-C or a scheduler's SIGTERM reaches
    every process of the group; the main process stops the workers itself, and a worker the
    signal killed first turned a clean stop into "DataLoader worker ... killed by signal" and
    exit status 1."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)
