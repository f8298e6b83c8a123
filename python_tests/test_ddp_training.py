"""Training under DDP: two gloo processes on the CPU, and rank 0's work handed to every rank."""
import json

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import load  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from test_recipes import TINY  # noqa: E402


def _ddp_worker(rank, folder, ports):
    import os

    from refmatch.recipes.train import Trainer

    def trainer(port, resume=False):
        os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        return Trainer(load_config(None, TINY + ["method=refmatch", "steps=4", "device=cpu"]), folder,
                       resume=resume)

    first = trainer(ports[0])
    try:
        first.fit(stop_at=2)
        # DDP averages gradients: rank 0's saved parameters equal this rank's
        # (BatchNorm running statistics stay per rank, as DDP leaves them).
        if rank == 1:
            saved = load(folder / "latest.pt")["student"]
            for name, value in first.student.named_parameters():
                assert torch.equal(value, saved[name]), name
    finally:
        first.run.close()
    if rank == 0:  # a split that a fresh draw would not give (as after images were added)
        splits = json.loads((folder / "splits.json").read_text())
        splits["labeled"][0], splits["unlabeled"][0] = splits["unlabeled"][0], splits["labeled"][0]
        (folder / "splits.json").write_text(json.dumps(splits))
    resumed = trainer(ports[1], resume=True)  # rank 1 joins once rank 0 has rewritten the file
    assert sorted(resumed.data.labeled.names) == sorted(json.loads((folder / "splits.json").read_text())["labeled"])
    own_stream = torch.equal(resumed.generator.get_state(), first.generator.get_state())
    try:
        resumed.fit()
    finally:
        resumed.run.close()
    assert own_stream, f"rank {rank} resumed another rank's random stream"  # after the collectives


def test_ddp_with_two_gloo_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    mp.spawn(_ddp_worker, args=(tmp_path, ports), nprocs=2, join=True)
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "refmatch"


@pytest.mark.parametrize("rank_zero_fails", [False, True])
def test_on_rank_zero_hands_its_result_or_error_to_every_rank(monkeypatch, rank_zero_fails):
    """A non-zero rank never runs the work, takes rank 0's result, and raises rank 0's own error
    (a ValueError stays one: the command line prints it as one line) instead of waiting."""
    from refmatch.recipes import ranks

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(ranks.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ranks.dist, "get_world_size", lambda: 2)
    sent = ("error", ranks._portable(ValueError("no images"))) if rank_zero_fails else ("value", {"labeled": ["a"]})
    monkeypatch.setattr(ranks.dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, sent))
    ran = []
    if rank_zero_fails:
        with pytest.raises(ValueError, match="^no images$"):
            ranks.on_rank_zero(lambda: ran.append(1))
    else:
        assert ranks.on_rank_zero(lambda: ran.append(1)) == {"labeled": ["a"]}
    assert ran == []


def test_an_error_that_cannot_be_pickled_reaches_other_ranks_by_name():
    from refmatch.recipes import ranks

    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    assert str(ranks._portable(Unpicklable(1, 2))) == "rank 0 failed: Unpicklable: 1 and 2"


def _locked_folder_worker(rank, folder, port):
    import os

    from refmatch.recipes.train import Trainer

    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as dist

    try:
        Trainer(load_config(None, TINY + ["device=cpu"]), folder)
    except BlockingIOError as error:  # and the group torn down: a process exiting in one aborted (SIGABRT)
        (folder / f"rank{rank}.txt").write_text(f"{error}; group left: {not dist.is_initialized()}")


def test_every_rank_refuses_a_folder_that_another_run_holds(tmp_path):
    """Rank 0 takes the lock; the other ranks learn of its refusal at once (they waited in
    the process group's start-up until torchrun killed them)."""
    import socket
    import time

    import torch.multiprocessing as mp

    from refmatch.recipes.run_lock import RunFolderLock

    holder = RunFolderLock(tmp_path)
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ranks = mp.spawn(_locked_folder_worker, args=(tmp_path, port), nprocs=2, join=False)
        deadline = time.monotonic() + 60
        while not ranks.join(timeout=1):
            if time.monotonic() > deadline:
                for process in ranks.processes:
                    process.kill()
                pytest.fail("a rank still waited 60 s after rank 0 refused the folder")
    finally:
        holder.release()
    for rank in (0, 1):
        assert "in use by another refmatch run" in (tmp_path / f"rank{rank}.txt").read_text()
        assert (tmp_path / f"rank{rank}.txt").read_text().endswith("group left: True")
