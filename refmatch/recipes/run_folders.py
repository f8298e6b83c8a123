"""A run's folder: checked not to be a dataset, claimed (locked) for one run, and emptied for a
new run by ``--overwrite`` without losing the earlier run before the new one is built."""
import contextlib
import os
import re
import shutil
from pathlib import Path

from ..data.folder import OTHER_IMAGE_SUFFIXES
from .checkpoint import OVERWRITTEN
from .progress import launched_rank
from .ranks import on_rank_zero
from .run_lock import folders_to_make, take_lock, undo_lock

# What a run writes into its folder; --overwrite removes them before a new run starts there.
RUN_OUTPUTS = ("latest.pt", "best.pt", "metrics.json", "splits.json", "train.log", "images", "tensorboard",
               "compare-pseudo-labels")


# Written where they are, not replaced by a rename: a link there would be written through (its
# target appended to, or deleted by --overwrite), so a run refuses links of these names.
WRITTEN_IN_PLACE = ("train.log", OVERWRITTEN)
DATASET_PARTS = ("images", "masks", "unlabeled")
IMAGE_SUFFIXES = (".png", *OTHER_IMAGE_SUFFIXES)  # what a dataset's images/ holds (not .DS_Store & co.)
GRID_NAME = re.compile(r"step_\d{6}\.png")  # a run's grids (grid_name)


def grid_name(step):
    """The file name of a run's picture grid at ``step`` in its images/."""
    return f"step_{step:06d}.png"


def check_not_a_dataset(run_dir, data):
    """Refuse a run folder that is a dataset folder (it holds masks/, or images/ holding other
    files than a run's grids) or lies in one of ``data``'s image folders: a run writes its grids
    into its images/, and --overwrite deletes a run's outputs by name, images/ among them (40
    training images went so)."""
    run_dir = Path(os.path.abspath(run_dir))
    if (run_dir / "masks").is_dir():
        raise ValueError(f"--out {run_dir} holds masks/: a dataset folder, whose images/ a run would write its grids "
                         "into (and --overwrite delete); train into a folder of its own")
    images = run_dir / "images"
    foreign = sorted(name for name in (os.listdir(images) if images.is_dir() else ())
                     if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
                     and not GRID_NAME.fullmatch(name))
    if foreign:
        raise ValueError(f"--out {run_dir} holds images/ with images a run does not write ({foreign[0]}, ...): "
                         "a dataset folder, whose images --overwrite would delete; train into a folder of its own")
    inside = [] if data == "phantom" else [Path(os.path.abspath(data)) / part for part in DATASET_PARTS]
    if any(folder in inside for folder in (run_dir, *run_dir.parents)):
        raise ValueError(f"--out {run_dir} lies in the data's image folders ({data}): train into a folder of its own")


@contextlib.contextmanager
def claimed_run_folder(run_dir, new_run, overwrite=False):
    """Around building a run in ``run_dir``: its lock first (rank 0; nothing moves while another
    run holds the folder; under torchrun, ``ranks.join_process_group`` comes before, so that
    every rank raises rank 0's refusal), then, for a ``new_run``, ``fresh_run``. Yields the lock
    (None on other ranks), which the run keeps until it ends (``RunContext.release_files``);
    building that fails releases it and removes the folders it made, lock file included."""
    run_dir = Path(run_dir)
    made = folders_to_make(run_dir)
    # under torchrun every rank learns of a refusal
    lock = on_rank_zero(lambda: take_lock(run_dir, made, WRITTEN_IN_PLACE), share_result=False)
    try:
        with fresh_run(run_dir, overwrite) if new_run else contextlib.nullcontext():
            yield lock
    except BaseException:
        undo_lock(lock, made)  # the folder is left as it was
        raise


@contextlib.contextmanager
def fresh_run(run_dir, overwrite=False):
    """Around building a new run in ``run_dir``: refuse a folder that holds a run's checkpoints
    (its work would be overwritten) unless ``overwrite``. Then that run's ``RUN_OUTPUTS`` move
    into ``run_dir/.overwritten`` (rank 0) and are deleted once the body has built the new run;
    if the body raises (bad data, a model that cannot be built, Ctrl-C), the new run's outputs
    go (``claimed_run_folder`` removes the folders it made) and the earlier run's come back. In a
    folder holding no checkpoint, outputs found there stay, as the new run left them (it rewrites
    ``splits.json`` and adds to ``train.log``). A killed process leaves them in ``.overwritten``,
    which a new run there then refuses without ``overwrite`` and deletes with it."""
    run_dir = Path(run_dir)
    held = [name for name in ("latest.pt", "best.pt") if (run_dir / name).exists()]
    if held and not overwrite:
        raise FileExistsError(f"{run_dir} holds a run ({', '.join(held)}): continue it with --resume, "
                              "start it over with --overwrite, or train into another --out")
    main_rank = launched_rank() == 0
    aside, moved = run_dir / OVERWRITTEN, []
    # An --overwrite killed before its run saved a checkpoint left the earlier run aside.
    stranded = not held and any((aside / name).exists() for name in ("latest.pt", "best.pt"))
    if stranded and not overwrite:
        raise FileExistsError(f"{aside} holds the earlier run that an --overwrite set aside before it was stopped: "
                              "start over with --overwrite (which deletes it), or train into another --out")
    # A resume that took a run further set its shorter result aside (checkpoint.set_aside_shorter_result).
    outputs = (*RUN_OUTPUTS, *sorted(path.name for path in run_dir.glob("metrics_at_step_*.json")))
    kept = {name for name in outputs if (run_dir / name).exists()}  # a folder holding no run: not ours
    if held and main_rank:
        _remove(aside)
        aside.mkdir()
        moved, kept = sorted(kept), set()
        for name in moved:
            (run_dir / name).rename(aside / name)
    try:
        yield
    except BaseException:
        if main_rank:
            for name in set(outputs) - kept:
                _remove(run_dir / name)
            for name in moved:
                (aside / name).rename(run_dir / name)
            if moved:
                aside.rmdir()
        raise
    if main_rank and (moved or stranded):  # rank 0 alone: every rank deleting it raced
        _remove(aside)


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
