"""The run folder's lock where the file system has no locks, and what a refusal says."""
import errno
import os
import re
import socket
import subprocess
import sys

import pytest

from refmatch.recipes.run_lock import RunFolderLock


def test_a_file_system_without_locks_runs_unlocked(tmp_path, monkeypatch, caplog):
    """flock's ENOLCK (NFS without lockd; Lustre mounted noflock gives ENOSYS) was meant to let
    the run go on unlocked, but raised AttributeError: '_key'."""
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = RunFolderLock(tmp_path)
    assert "running without a lock" in caplog.text
    lock.release()
    lock.release()


def test_a_refusal_names_the_holder_and_how_to_free_a_lost_one(tmp_path):
    """The lock said only 'in use by another refmatch run': a run on a lost node (its lock kept by
    a network file system) could be neither waited for nor stopped."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from refmatch.recipes.run_lock import "
                               "RunFolderLock; lock = RunFolderLock(sys.argv[1]); print('held', flush=True); "
                               "sys.stdin.read()", str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "SLURM_JOB_ID": "4242"})
    try:
        assert holder.stdout.readline().strip() == "held"
        pattern = (rf"in use by another refmatch run \(it holds .lock: host {re.escape(socket.gethostname())}, "
                   rf"process {holder.pid}, SLURM job 4242, since 20\d\d-.*\): wait for that run to end, or stop "
                   rf"it; if it has ended .* delete {re.escape(str(tmp_path / '.lock'))}")
        with pytest.raises(BlockingIOError, match=pattern):
            RunFolderLock(tmp_path)
        with pytest.raises(BlockingIOError, match=pattern):  # a refused run leaves the holder's note
            RunFolderLock(tmp_path)
    finally:
        holder.communicate("")
    RunFolderLock(tmp_path).release()  # the holder's process ended: free


def test_a_full_disk_leaves_the_lock_without_its_note(tmp_path, monkeypatch, caplog):
    """Writing the holder's note on a full disk raised after the lock was taken, refusing the run."""
    from refmatch.recipes import run_lock

    class FullDisk:
        def __init__(self, path):
            self._file = open_lock_file(path)

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._file, name)

    open_lock_file = run_lock.open_lock_file
    monkeypatch.setattr(run_lock, "open_lock_file", FullDisk)
    lock = RunFolderLock(tmp_path)
    assert "cannot note this run" in caplog.text
    second = subprocess.run([sys.executable, "-c", "import sys; from refmatch.recipes.run_lock import "
                             "RunFolderLock; RunFolderLock(sys.argv[1])", str(tmp_path)],
                            capture_output=True, text=True)
    assert "in use by another refmatch run (it holds .lock): wait" in second.stderr
    lock.release()


@pytest.mark.parametrize("link", [".lock", "train.log", ".overwritten"])
def test_links_where_a_run_writes_are_refused_before_anything_is_written(tmp_path, link):
    """A .lock linked to a file had it emptied for the lock's note; a train.log link appended the
    run's lines (class names and all) to its target: a prepared folder could write anywhere."""
    from refmatch.recipes.run_folders import claimed_run_folder

    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / link).symlink_to(victim)
    with pytest.raises(ValueError, match=f"{re.escape(str(run))} holds symbolic links where refmatch writes "
                                         f"\\({re.escape(link)}\\): it writes only into the folder itself"):
        with claimed_run_folder(run, new_run=True):
            pass
    assert victim.read_text() == "mine\n"


def test_a_lock_linked_after_the_check_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(ValueError, match="holds symbolic links where refmatch writes \\(.lock\\)"):
        RunFolderLock(tmp_path / "run")
    assert victim.read_text() == "mine\n"


def test_folders_linked_to_another_disk_are_taken(tmp_path):
    """images/ and tensorboard/ linked to a bigger disk: their files are new or renamed into
    place, so nothing is written through to a file elsewhere."""
    from refmatch.recipes.run_folders import claimed_run_folder

    (tmp_path / "big").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    for name in ("images", "tensorboard"):
        (run / name).symlink_to(tmp_path / "big", target_is_directory=True)
    with claimed_run_folder(run, new_run=True):
        pass


def test_pseudo_label_refuses_a_linked_write_test_and_takes_linked_folders(tmp_path):
    from refmatch.recipes.pseudo_label import WRITE_TEST
    from refmatch.recipes.run_lock import locked_folder

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "labels").symlink_to(tmp_path, target_is_directory=True)
    with locked_folder(tmp_path / "out", (WRITE_TEST,)):
        pass
    (tmp_path / "out" / WRITE_TEST).symlink_to(tmp_path / "victim")  # touching it would make the target
    with pytest.raises(ValueError, match=r"holds symbolic links where refmatch writes \(.refmatch-write-test\)"):
        with locked_folder(tmp_path / "out", (WRITE_TEST,)):
            pass
    assert not (tmp_path / "victim").exists()
