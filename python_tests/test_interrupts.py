"""Stop signals and the recipe's DataLoader workers: Ctrl-C and a scheduler's SIGTERM reach every
process of the group, the workers included."""
import os
import signal
import time

import pytest
import torch
from torch.utils.data import DataLoader

from refmatch.recipes.interrupts import worker_ignores_stop_signals


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        time.sleep(0.05)
        return index


def read_after_signalling_the_workers(worker_init_fn):
    loader = iter(DataLoader(Slow(), batch_size=1, num_workers=2, worker_init_fn=worker_init_fn))
    first = next(loader)  # the workers have started and run worker_init_fn
    for worker in loader._workers:
        os.kill(worker.pid, signal.SIGTERM)
    return [int(first)] + [int(batch) for batch in loader]


def test_the_workers_read_on_and_the_main_process_decides():
    """A worker the signal killed first made the main process raise "DataLoader worker ... killed
    by signal" (a traceback, exit status 1) instead of its own clean stop."""
    with pytest.raises(RuntimeError, match="DataLoader worker .* (killed by signal|exited unexpectedly)"):
        read_after_signalling_the_workers(None)
    assert read_after_signalling_the_workers(worker_ignores_stop_signals) == list(range(6))


@pytest.mark.parametrize("reader", ["data_setup", "evaluation", "pseudo_label"])
def test_every_loader_of_the_recipe_gives_its_workers_the_handler(reader):
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(f"refmatch.recipes.{reader}"))
    assert source.count("DataLoader(") == source.count("worker_init_fn=worker_ignores_stop_signals")
