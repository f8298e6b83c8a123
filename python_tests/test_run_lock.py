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
        def __init__(self, *args):
            self._file = open(*args)

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._file, name)

    monkeypatch.setattr(run_lock, "open", FullDisk, raising=False)
    lock = RunFolderLock(tmp_path)
    assert "cannot note this run" in caplog.text
    second = subprocess.run([sys.executable, "-c", "import sys; from refmatch.recipes.run_lock import "
                             "RunFolderLock; RunFolderLock(sys.argv[1])", str(tmp_path)],
                            capture_output=True, text=True)
    assert "in use by another refmatch run (it holds .lock): wait" in second.stderr
    lock.release()
