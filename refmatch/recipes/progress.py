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


def progress_bar(total, description, unit="image", initial=0, delay=0.0):
    """A tqdm bar counting ``total`` ``unit``s where stderr is a terminal (a silent one without
    tqdm, which comes with the train extra, or without a terminal). With a ``delay``, it shows
    only once that many seconds have passed and goes when closed: quick or nested work (a bank
    refresh under the training bar) leaves no line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _SilentBar()
    if not sys.stderr.isatty() or launched_rank() != 0:  # one bar, rank 0's
        return _SilentBar()
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
        if done * REPORTS // len(steps) > reported * REPORTS // len(steps) and step + 1 < steps.stop:
            pace, since, reported = (time.time() - since) / (done - reported), time.time(), done
            later = (f" at this pace; more, as pseudo-labels from step {slower_from + 1} make steps slower"
                     if slower_from is not None and step + 1 <= slower_from else "")
            logger.info("step %d/%d, %.2f s a step, about %s left%s", step + 1, steps.stop, pace,
                        _duration(pace * (steps.stop - step - 1)), later)


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
