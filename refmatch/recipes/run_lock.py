"""One process per run folder: a second ``refmatch train`` in a folder that a live run holds
(a ``--resume`` started twice, say) would interleave checkpoints and logs, so it is refused.

The lock is an advisory ``flock`` on ``run_dir/.lock``, which the kernel drops when its
process ends, however it ends. The file names its holder (host, process, SLURM job, start),
for a refusal to quote. The file stays: deleting it while locked would let a second run lock
a new file of the same name. Where the file system cannot lock (some network
mounts) or the platform has no ``fcntl``, runs go unlocked.
"""
import contextlib
import logging
import os
import socket
import time
from pathlib import Path

from ..atomic_file import temporaries

LOCK_NAME = ".lock"
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_held_here = set()  # the lock files this process holds: a refusal says when the holder is this process


class RunFolderLock:
    """Holds ``run_dir/.lock`` until ``release()``; raises BlockingIOError naming the folder
    when another process holds it. Once held, it also removes the temporary files a killed
    run's atomic writes left (``.<name>.<random>.tmp``): no live run is writing them."""

    def __init__(self, run_dir):
        self.path, self.file, self._key = Path(run_dir) / LOCK_NAME, None, None
        self.created = not self.path.exists()  # a run that fails to start removes a lock file it made
        try:
            import fcntl
        except ImportError:
            return
        self.file = open_lock_file(self.path)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip()
            self.file.close()
            if self.path.resolve() in _held_here:
                raise BlockingIOError(f"{self.path.parent} is held by a run in this process that was not closed (a "
                                      "Trainer: call its close(), or build it in a with block; a pseudo-label "
                                      "still running)") from None
            raise BlockingIOError(f"{self.path.parent} is in use by another refmatch run (it holds {LOCK_NAME}"
                                  f"{': ' + holder if holder else ''}): wait for that run to end, or stop it; if it "
                                  f"has ended (its node lost: a network file system may keep its lock), delete "
                                  f"{self.path}") from None
        except OSError as error:  # no locks on this file system: go on without one
            logging.getLogger("refmatch").warning("cannot lock %s (%s): running without a lock", self.path, error)
            self.release()
            return
        job = f", SLURM job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""
        try:  # a note for a refused run to quote; the lock holds without it (a full disk)
            self.file.truncate(0)
            self.file.write(f"host {socket.gethostname()}, process {os.getpid()}{job}, since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            self.file.flush()
        except OSError as error:
            logging.getLogger("refmatch").warning("cannot note this run in %s (%s)", self.path, error)
        self._key = self.path.resolve()  # as taken: a later chdir or relinked folder would miss it
        _held_here.add(self._key)
        for folder in (self.path.parent, self.path.parent / "images"):  # the grids' folder too
            for stale in temporaries(folder):
                stale.unlink(missing_ok=True)

    def release(self):
        """Drop the lock (a no-op when none is held); the file stays."""
        if self.file is not None:
            self.file.close()
            self.file = None
            _held_here.discard(self._key)


def remove_empty_folders(folders):
    """Remove those of ``folders`` (deepest first) that are empty."""
    for folder in folders:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def folders_to_make(folder):
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    folder = Path(folder)
    return [path for path in (folder, *folder.parents) if not path.exists()]


def open_lock_file(path):
    """``path`` opened to read and append, made where missing: not emptied ("w"), as a refused run
    must not erase the holder's note, and never through a link, whose target the note would replace."""
    try:
        return os.fdopen(os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_APPEND | NO_FOLLOW, 0o644), "a+")
    except OSError:
        if Path(path).is_symlink():
            refuse_links(Path(path).parent, [LOCK_NAME])
        raise


def refuse_links(folder, names):
    """ValueError where any of ``names`` in ``folder`` is a symbolic link: writing through one
    would change a file elsewhere (the lock's note erased it, the log appended to it). Files
    written by a rename (checkpoints, grids, labels) replace a link, so they need no check."""
    links = [name for name in names if (Path(folder) / name).is_symlink()]
    if links:
        raise ValueError(f"{folder} holds symbolic links where refmatch writes ({', '.join(links)}): it writes "
                         "only into the folder itself; delete the links, or take another folder")


def take_lock(folder, made, written_in_place=()):
    """``folder`` made and held (``RunFolderLock``), after refusing links named as its lock or
    ``written_in_place`` (what the run writes there without a rename); where that fails, the
    folders of ``made`` (``folders_to_make``'s) that it left empty go again."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        refuse_links(folder, [LOCK_NAME, *written_in_place])
        return RunFolderLock(folder)
    except BaseException:
        remove_empty_folders(made)
        raise


def undo_lock(lock, made):
    """After a failed start: release ``lock`` (None: held elsewhere), delete the lock file it
    created, and remove the folders of ``made`` left empty, so the folder is as it was."""
    if lock is not None:
        lock.release()
        if lock.created:
            lock.path.unlink(missing_ok=True)
    remove_empty_folders(made)


@contextlib.contextmanager
def locked_folder(folder, written_in_place=()):
    """``folder``, made with its parents and held (``RunFolderLock``; the names the body writes
    there without a rename, ``written_in_place``, may not be links) for the body, which gets the
    lock. A body that raises takes what this made with it (``undo_lock``: a mistyped flag leaves
    no folder behind)."""
    made = folders_to_make(folder)
    lock = take_lock(folder, made, written_in_place)
    try:
        yield lock
    except BaseException:
        undo_lock(lock, made)
        raise
    finally:
        lock.release()
