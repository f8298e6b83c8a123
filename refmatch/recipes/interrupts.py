"""Stopping a run cleanly: Ctrl-C (SIGINT), SIGTERM (a cluster's preemption), SIGUSR1 (what
``sbatch --signal=USR1@120`` sends ahead of a time limit) or SIGHUP (a closed terminal) ends it
after the current step, with ``latest.pt`` saved, instead of losing every step since the
last checkpoint."""
import contextlib
import logging
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
# The stop signal the command line's handlers last raised for (``note_stop``). Python drops an
# exception raised inside os.fork's at-fork hooks, as when a DataLoader starts its workers, and
# the run then trained to its end; the training loop takes a noted signal as its own.
_noted = None


def note_stop(name):
    """Remember that the command line raised for signal ``name`` (a name of ``SIGNALS``: "SIGINT", ...)."""
    global _noted
    _noted = name


def noted_stop():
    """The noted signal's name, or None."""
    return _noted


def take_noted_stop():
    """The noted signal's name, or None; forgets it."""
    global _noted
    noted, _noted = _noted, None
    return noted


class StopRequest:
    """Inside ``catching()`` the first of ``SIGNALS`` sets ``signal`` (its name) instead
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
        previous = {number: signal.signal(number, self._handle) for number in SIGNALS
                    if signal.getsignal(number) is not signal.SIG_IGN}  # a signal started ignored stays so
        noted = take_noted_stop()
        if noted is not None and self.signal is None:
            self.signal = noted
            logging.getLogger("refmatch").warning("%s came before training started (where Python lost it): stopping "
                                                  "after this step, once latest.pt is saved", noted)
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

    def raise_it(self):
        """After the run saved its state: KeyboardInterrupt for SIGINT, exit status 128 + the
        signal's number for the others (143 for SIGTERM, and for a stop on another rank)."""
        if self.signal == "SIGINT":
            raise KeyboardInterrupt
        if self.signal is not None:
            raise SystemExit(128 + signal.Signals.__members__.get(self.signal, signal.SIGTERM))


def worker_ignores_stops(worker_id):
    """``worker_init_fn`` of the recipe's DataLoaders: the workers ignore the main process's stop
    signals. Ctrl-C reaches every process of the terminal's group (a closed terminal's SIGHUP and
    SLURM's SIGUSR1 reach every process of the job); a worker it stopped first turned the main
    process's clean stop into "DataLoader worker ... exited unexpectedly" and exit status 1.
    (SIGTERM stays: DataLoader and multiprocessing stop workers with it; the command line names
    a worker killed by a SIGTERM it received too as that stop.)"""
    for number in SIGNALS:
        if number != signal.SIGTERM:
            signal.signal(number, signal.SIG_IGN)
