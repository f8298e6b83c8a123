"""Stop signals and the recipe's DataLoader workers: Ctrl-C and a scheduler's SIGTERM reach every
process of the group, the workers included."""
import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader

from refmatch.recipes.interrupts import worker_ignores_stops


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        time.sleep(0.05)
        return index


def read_after_signalling_the_workers(worker_init_fn, number=signal.SIGINT):
    loader = iter(DataLoader(Slow(), batch_size=1, num_workers=2, worker_init_fn=worker_init_fn))
    first = next(loader)  # the workers have started and run worker_init_fn
    for worker in loader._workers:
        os.kill(worker.pid, number)
    return [int(first)] + [int(batch) for batch in loader]


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGUSR1, signal.SIGHUP])
def test_a_stop_signal_leaves_the_workers_reading_and_the_main_process_decides(number):
    """A worker that Ctrl-C (or SLURM's SIGUSR1, a closed terminal's SIGHUP) stopped first made the
    main process raise "DataLoader worker ... exited unexpectedly" (a traceback, exit status 1)
    instead of its own clean stop."""
    if signal.getsignal(number) is signal.SIG_IGN:  # under nohup: ignored by every process already
        pytest.skip(f"{signal.Signals(number).name} is ignored here")
    # torch's error about the dead worker, or, by timing, the broken queue or shared memory under it
    with pytest.raises((RuntimeError, EOFError, OSError)):
        read_after_signalling_the_workers(None, number)
    assert read_after_signalling_the_workers(worker_ignores_stops, number) == list(range(6))


@pytest.mark.parametrize("reader", ["data_setup", "evaluation", "pseudo_label"])
def test_every_loader_of_the_recipe_gives_its_workers_the_handler(reader):
    """worker_ignores_stops in each DataLoader of the recipe's readers."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(f"refmatch.recipes.{reader}"))
    assert source.count("DataLoader(") == source.count("worker_init_fn=worker_ignores_stops")


def test_a_stop_python_lost_before_training_stops_the_run_after_its_first_step(tmp_path):
    """A SIGTERM that came while DataLoader workers forked raised inside os.fork's at-fork hooks,
    where Python drops the exception: the run trained to its end with exit status 0."""
    pytest.importorskip("yaml", reason="the train extra is not installed")
    from refmatch.recipes.checkpoint import load
    from refmatch.recipes.config import load_config
    from refmatch.recipes.interrupts import note_stop, take_noted_stop
    from refmatch.recipes.train import Trainer
    from test_recipes import TINY

    trainer = Trainer(load_config(None, TINY + ["steps=4"]), tmp_path)
    note_stop("SIGTERM")  # as the command line's handler does before raising
    try:
        with pytest.raises(SystemExit) as stopped:
            trainer.fit()
    finally:
        trainer.run.close()
    assert stopped.value.code == 128 + signal.SIGTERM and take_noted_stop() is None
    assert load(tmp_path / "latest.pt")["step"] == 1


@pytest.mark.parametrize("name, status, line", [("SIGTERM", 143, "terminated (SIGTERM)"),
                                                 ("SIGINT", 130, "interrupted")])
def test_a_worker_the_same_stop_killed_reads_as_the_stop(monkeypatch, capsys, name, status, line):
    """A SIGTERM to the process group kills the workers too (DataLoader stops them with it, so they
    keep it): torch's error about them is the stop, with its status and line, not a traceback."""
    import sys

    from refmatch.__main__ import main
    from refmatch.recipes.interrupts import note_stop

    def command(arguments):
        note_stop(name)  # as the command line's handler does, whose exception torch's came after
        raise RuntimeError("DataLoader worker (pid 4875) is killed by signal: Terminated.")
    monkeypatch.setattr("refmatch.recipes.cli.evaluate_main", command)
    monkeypatch.setattr(sys, "argv", ["refmatch", "evaluate"])
    assert main() == status
    assert capsys.readouterr().err == f"refmatch evaluate: {line}\n"

    def crash(arguments):
        note_stop(name)
        raise RuntimeError("CUDA error: out of memory")
    monkeypatch.setattr("refmatch.recipes.cli.evaluate_main", crash)
    with pytest.raises(RuntimeError, match="out of memory"):  # not a worker's: a crash, as it is
        main()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGHUP"])
def test_a_stop_signal_outside_training_is_named_with_its_status(monkeypatch, capsys, name):
    """SIGUSR1 and SIGHUP during data setup ended the process without a word (an --overwrite
    left .overwritten behind); they stop as SIGTERM does: one line, 128 + the signal."""
    import sys

    from refmatch.__main__ import main

    number = signal.Signals[name]
    if signal.getsignal(number) is signal.SIG_IGN:
        pytest.skip(f"{name} is ignored here (nohup)")

    def command(arguments):
        os.kill(os.getpid(), number)
        time.sleep(5)
    monkeypatch.setattr("refmatch.recipes.cli.evaluate_main", command)
    monkeypatch.setattr(sys, "argv", ["refmatch", "evaluate"])
    assert main() == 128 + number
    assert capsys.readouterr().err == f"refmatch evaluate: terminated ({name})\n"


def test_a_signal_the_process_was_started_ignoring_stays_ignored(monkeypatch):
    """A job started with `cmd &` in a script ignores SIGINT; the command line took it over."""
    import sys

    from refmatch.__main__ import main

    seen = []
    monkeypatch.setattr("refmatch.recipes.cli.evaluate_main", lambda arguments: seen.append(signal.getsignal(
        signal.SIGINT)))
    monkeypatch.setattr(sys, "argv", ["refmatch", "evaluate"])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert main() == 0 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN]
