"""Progress of long work: tqdm bars where stderr is a terminal, and log lines that say how far a
run is and how long it has left, which also reach train.log and redirected output (a cluster
job's log file would otherwise fill with a bar's carriage returns)."""
import logging
import os
import sys
import time

REPORTS = 10  # log lines over a run: one each tenth


def launched_rank():
    """This process's rank as the launcher (torchrun) set it; 0 when run alone."""
    return int(os.environ.get("RANK", "0"))


class _SilentBar:
    """What ``progress_bar`` gives without tqdm or a terminal: the calls, no output."""

    def update(self, count=1):
        pass

    def set_postfix(self, **values):
        pass

    def close(self):
        pass


class _TenthLines(_SilentBar):
    """What ``progress_bar(lines=True)`` gives without tqdm or a terminal: a line on stderr after
    each tenth of the work but the last, with the pace and the time left."""

    def __init__(self, total, description, unit, initial):
        self.total, self.description, self.unit = total, description, unit
        self.done = self.reported = self.started_at = initial
        self.since = time.time()

    def update(self, count=1):
        self.done += count
        if _new_tenth(self.done, self.reported, self.total) and self.done < self.total:
            pace = (time.time() - self.since) / (self.done - self.started_at)
            self.reported = self.done
            print(f"{self.description}: {self.done}/{self.total} {self.unit}s, {pace:.2f} s per {self.unit}, about "
                  f"{_duration(pace * (self.total - self.done))} left", file=sys.stderr, flush=True)


def progress_bar(total, description, unit="image", initial=0, delay=0.0, lines=False):
    """A tqdm bar counting ``total`` ``unit``s where stderr is a terminal. Without tqdm (which
    comes with the train extra) or a terminal: with ``lines``, a line each tenth (a command's
    redirected output, where a bar's carriage returns would pile up); else nothing. With a
    ``delay``, a bar shows only once that many seconds have passed and goes when closed: quick
    or nested work (a bank refresh under the training bar) leaves no line."""
    if launched_rank() != 0:  # one bar, rank 0's
        return _SilentBar()
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty():
        return _TenthLines(total, description, unit, initial) if lines and total > 0 else _SilentBar()
    return tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True, mininterval=1.0, initial=initial,
                delay=delay, leave=not delay)


def reported_steps(steps, bar, logger, slower_from=None):
    """Iterates ``steps`` (a range), moving ``bar`` on, and logs the step, the pace of the last
    tenth (a run's phases differ: pseudo-label steps are slower) and the time left after each
    tenth of them (not after the last step: the run's own lines follow). Up to step index
    ``slower_from`` (where pseudo-labels start: step slower_from + 1 as the lines count, from 1)
    the line says the estimate will grow: in one run
    of the main job its steps took about six times as long after it."""
    reported, since = 0, time.time()
    for done, step in enumerate(steps, 1):
        yield step
        bar.update(1)
        if _new_tenth(done, reported, len(steps)) and step + 1 < steps.stop:
            pace, since, reported = (time.time() - since) / (done - reported), time.time(), done
            later = (f" at this pace; more, as pseudo-labels from step {slower_from + 1} make steps slower"
                     if slower_from is not None and step + 1 <= slower_from else "")
            logger.info("step %d/%d, %.2f s a step, about %s left%s", step + 1, steps.stop, pace,
                        _duration(pace * (steps.stop - step - 1)), later)


def _new_tenth(done, reported, total):
    """Whether ``done`` of ``total`` has crossed into a tenth that ``reported`` had not reached."""
    return done * REPORTS // total > reported * REPORTS // total


def _duration(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ConsoleHandler(logging.StreamHandler):
    """Log lines on stderr that do not run into the progress bar (tqdm.write lifts it)."""

    def emit(self, record):
        try:
            from tqdm import tqdm
        except ImportError:
            return super().emit(record)
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as StreamHandler: a broken stream must not stop training
            self.handleError(record)
