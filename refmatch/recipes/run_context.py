"""What a run needs around the model: device, DDP, log file, TensorBoard, progress, saving."""
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import save_atomic
from .progress import ConsoleHandler, launched_rank, progress_bar, reported_steps
from .ranks import leave_process_group, on_rank_zero



# The runs open in this process, the latest last, and what the first of them changed: a warning
# (a class lost to downsampling, dark images) becomes a line of the latest run's train.log, once,
# and the "refmatch" logger logs at INFO. The last run to close gives both back as it found them.
_open_runs, _before_runs = [], {}


def _show_warning(message, category, *where, **options):
    """``warnings.showwarning`` while runs are open: into the latest run's train.log."""
    _open_runs[-1]._log_warning(message, category)


def _open_run(run):
    """Count ``run`` among the open runs; the first takes over the warning display and the level."""
    if not _open_runs:
        logger = logging.getLogger("refmatch")
        _before_runs.update(showwarning=warnings.showwarning, level=logger.level)
        warnings.showwarning = _show_warning
        logger.setLevel(logging.INFO)
    _open_runs.append(run)


def _close_run(run):
    """Count ``run`` out; the last gives the warning display and the level back."""
    if run not in _open_runs:
        return
    _open_runs.remove(run)
    if not _open_runs:
        logger = logging.getLogger("refmatch")
        if warnings.showwarning is _show_warning:  # not where the caller has replaced it since
            warnings.showwarning = _before_runs["showwarning"]
        logger.setLevel(_before_runs["level"])


class RunContext:
    """Run folder services on ``device`` (``ranks.join_process_group``'s, which under torchrun
    joined the process group; ``close`` tears the group down).

    Only rank 0 writes files; every rank trains.
    """

    def __init__(self, run_dir, device, resumed_step=None, lock=None):
        self.dir, self.device = Path(run_dir), device
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = launched_rank()
        self.is_main = self.rank == 0
        self.logger = logging.getLogger("refmatch")
        self.writer, self.bar, self.lock, self._warned = None, None, None, set()
        _open_run(self)
        if self.is_main:
            self.lock = lock  # claimed_run_folder's, released with the log handlers
            try:  # a half-built run would keep its handlers and the warning display for good
                self.dir.mkdir(parents=True, exist_ok=True)
                self._log_to(logging.FileHandler(self.dir / "train.log"), "%Y-%m-%d %H:%M:%S")  # runs span days
                self._log_to(ConsoleHandler(sys.stderr), "%H:%M:%S")
                self.writer = self._tensorboard(resumed_step)
            except BaseException:
                self.release_files()
                raise

    def _log_warning(self, message, category):
        line = f"{category.__name__}: {message}"
        if line not in self._warned:  # Python shows a warning again whenever its filters change
            self._warned.add(line)
            self.logger.warning(line)

    def _log_to(self, handler, time_format):
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", time_format))
        self.logger.addHandler(handler)
        self._handlers = getattr(self, "_handlers", []) + [handler]

    def _tensorboard(self, resumed_step):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.logger.warning("tensorboard is not installed; scalars go to train.log only")
            return None
        # A resumed run drops what its stopped part logged after the checkpoint: those steps run again.
        purge_step = None if resumed_step is None else resumed_step + 1
        return SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge_step)

    def wrap(self, model):
        """DDP around ``model`` when distributed, else ``model`` itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def progress(self, steps, slower_from=None):
        """``steps`` (a range), on rank 0 with a bar (on a terminal) and a log line each tenth
        (``slower_from``: the step where pseudo-labels start, which the lines before it name)."""
        if not self.is_main:
            return steps
        self.bar = progress_bar(steps.stop, "train", unit="step", initial=steps.start)
        return reported_steps(steps, self.bar, self.logger, slower_from)

    def scalars(self, values, step):
        if not self.is_main:
            return
        for key, value in values.items():
            self._to_tensorboard("add_scalar", key, value, step)
        if self.bar is not None and "loss/total" in values:
            self.bar.set_postfix(loss=f"{values['loss/total']:.3f}", refresh=False)
        if any(key.startswith("val/") for key in values):
            summary = ", ".join(f"{k[4:]} {v:.4f}" for k, v in values.items() if k.count("/") == 1)
            foreground = [(k[9:], v) for k, v in values.items() if k.startswith("val/dice/")][1:]  # class 0 first
            if len(foreground) > 1:  # the mean hides which structure lags
                summary += "; Dice " + ", ".join(f"{name} {value:.4f}" for name, value in foreground)
            self.logger.info("step %d: %s", step, summary)

    def on_any_rank(self, flag):
        """Whether ``flag`` holds on any rank (a collective when distributed)."""
        if self.world == 1:
            return flag
        value = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value)

    def gather(self, value):
        """[value of rank 0, rank 1, ...] (a collective when distributed)."""
        if self.world == 1:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def from_main(self, compute):
        """``compute()`` run on rank 0, its result, or its error, on every rank (``on_rank_zero``)."""
        return on_rank_zero(compute)

    def save(self, name, state):
        """Rank 0 writes; every rank waits for it, so none reads a checkpoint early."""
        if self.is_main:
            save_atomic(state, self.dir / name)
        if self.world > 1:
            dist.barrier()

    def image(self, name, step, draw, *args):
        """images/<name>: a PNG that ``draw(path, *args)`` writes and returns ([H, W, 3] uint8),
        also in TensorBoard at ``step``."""
        if not self.is_main:
            return
        (self.dir / "images").mkdir(exist_ok=True)
        path = self.dir / "images" / name
        picture = draw(path, *args)
        self._to_tensorboard("add_image", "images", picture, step, dataformats="HWC")

    def _to_tensorboard(self, method, *args, **options):
        """``writer.method(*args, **options)``; its writer thread's error (a full disk), which names
        no file, as an OSError naming the events' folder."""
        if self.writer is None:
            return
        try:
            getattr(self.writer, method)(*args, **options)
        except OSError as error:
            raise OSError(error.errno, f"{error.strerror} (writing TensorBoard's events)",
                          str(self.dir / "tensorboard")) from error

    def log_failure(self, line):
        """``line`` (the error ending the run) in train.log only: the command line prints it once."""
        record = self.logger.makeRecord(self.logger.name, logging.ERROR, __file__, 0, "%s", (line,), None)
        for handler in getattr(self, "_handlers", []):
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)

    def release_files(self):
        """Close the TensorBoard writer and the log handlers (the log file is left in place), give
        Python's warnings and the logger back as they were once no run is open, and release the
        run folder's lock."""
        if self.writer is not None:
            with contextlib.suppress(OSError):  # its thread's error again, raised by the step that met it
                self.writer.close()
        for handler in getattr(self, "_handlers", []):
            self.logger.removeHandler(handler)
            handler.close()
        _close_run(self)
        if getattr(self, "lock", None) is not None:
            self.lock.release()
        self.writer, self._handlers = None, []

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.release_files()
        if self.world > 1 and dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still talks to it
            leave_process_group()
