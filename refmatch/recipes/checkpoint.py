"""Checkpoints written atomically: a kill mid-save leaves the previous file intact; a run's
metrics.json read back (its result stands) or set aside (a resume takes the run further)."""
import dataclasses
import io
import json
import logging
import pickle
import zipfile
from pathlib import Path

import torch

from ..atomic_file import write_atomic
from .config import MAX_CLASSES, UNUSED_BY, TrainConfig, as_saved, data_location, saved_config
from .unet import UNet

OVERWRITTEN = ".overwritten"  # where --overwrite keeps the earlier run until the new one has started


def save_atomic(state, path):
    """torch.save ``state`` to ``path`` through ``write_atomic``. Serialised in memory first: a
    full disk then fails in Python's own write, an OSError naming the file (torch's writer turns
    it into a RuntimeError about a stream position)."""
    serialised = io.BytesIO()
    torch.save(state, serialised)
    write_atomic(path, lambda file: file.write(serialised.getbuffer()))


def load(path, device="cpu", required=("config", "teacher")):
    """A checkpoint dict holding the ``required`` keys (every refmatch checkpoint has a config and
    a teacher); raises FileNotFoundError, or ValueError for a damaged or foreign file, naming the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder: name the file in it (a run's best.pt or latest.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    damaged = _failed_checksum(path)
    if damaged:
        raise ValueError(f"{path} is damaged: its record {damaged} fails its checksum (a bit flipped on disk or "
                         "in a copy); a run's other checkpoint (best.pt, latest.pt) may be whole")
    try:
        # Tensors and plain values only: unpickling a file from elsewhere could run its code.
        state = torch.load(path, map_location=device, weights_only=True)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:  # a zero-filled file gives KeyError, a cut one EOFError or RuntimeError
        told = " ".join(str(error).split())
        if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(path):  # torch.save's format
            raise ValueError(f"{path} is not a refmatch checkpoint: it holds Python objects besides tensors and "
                             f"plain values, which refmatch does not unpickle ({told[:160]})") from None
        raise ValueError(f"{path} is not a readable checkpoint (damaged or not written by refmatch): "
                         f"{type(error).__name__}: {told[:200]}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a refmatch checkpoint: it holds a {type(state).__name__}")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"{path} is not a refmatch checkpoint: it lacks {', '.join(missing)} (a plain model "
                         "state_dict? refmatch train writes best.pt and latest.pt)")
    return state


def _failed_checksum(path):
    """The name of the first record of a zip checkpoint (torch.save's format) whose CRC fails, or
    None (torch.load reports files that are no zip at all). Records stored with CRC 0 are not
    checked: ``torch.serialization.set_crc32_options(False)`` writes them so."""
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.CRC == 0:
                    continue
                try:
                    with archive.open(record) as data:  # reading to the end checks the CRC
                        while data.read(1 << 24):
                            pass
                except zipfile.BadZipFile:
                    return record.filename
    except (zipfile.BadZipFile, OSError, EOFError):
        pass  # no zip: torch.load says what the file is
    return None


def saved_teacher(state, path, device, num_classes=None):
    """(teacher UNet in eval mode on ``device``, its run's config) from a checkpoint ``state``
    read from ``path``; ``num_classes`` None: as many as its head has. Weights that do not fit
    the saved config raise ValueError naming the file."""
    if not isinstance(state["config"], dict) or "head.weight" not in state["teacher"]:
        raise ValueError(f"{path} is not a refmatch checkpoint: its config or teacher is not a training run's")
    config = saved_config(state["config"])
    classes = state["teacher"]["head.weight"].shape[0] if num_classes is None else num_classes
    if classes > MAX_CLASSES:  # a head of stride 0 fits a small file
        raise ValueError(f"{path}: its teacher predicts {classes} classes, more than masks name ({MAX_CLASSES})")
    with torch.device("meta"):  # shapes first, no memory: a config of width 200000 would ask for 1.4 TB
        model = UNet(1, classes, config.width, config.depth, config.norm)  # made once: its weights are loaded
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    given = {name: tuple(getattr(value, "shape", ())) for name, value in state["teacher"].items()}
    if expected != given:  # weights of another width, depth, norm or class count
        differ = next(name for name in sorted(expected.keys() | given.keys()) if expected.get(name) != given.get(name))
        raise ValueError(f"{path}: its teacher does not fit its own config (width {config.width}, depth "
                         f"{config.depth}, norm {config.norm}, {classes} classes): {differ} is "
                         f"{given.get(differ, 'missing')}, the config's model has {expected.get(differ, 'none')}")
    model.to_empty(device=device).load_state_dict(state["teacher"])
    return model.eval(), config


def load_latest(run_dir):
    """``run_dir/latest.pt``, what ``--resume`` continues (its "config" is the run's config), or
    ``best.pt`` where a run was stopped while writing its first latest.pt: best.pt, written just
    before it, holds the same step."""
    run_dir = Path(run_dir)
    path = run_dir / "latest.pt"
    if not path.exists() and (run_dir / "best.pt").exists():
        logging.getLogger("refmatch").warning("no latest.pt (stopped while writing it?): resuming from best.pt")
        path = run_dir / "best.pt"
    aside = run_dir / OVERWRITTEN
    if not path.exists() and any((aside / name).exists() for name in ("latest.pt", "best.pt")):
        left = [name for name in sorted(entry.name for entry in aside.iterdir()) if (run_dir / name).exists()]
        clear = f"delete what the stopped run wrote ({', '.join(left)}), then " if left else ""
        raise FileNotFoundError(f"checkpoint not found: {path}; an --overwrite was stopped before its new run saved "
                                f"one, and the earlier run waits in {aside}: to resume that run, {clear}move "
                                f"{aside.name}'s files back into {run_dir}; or start over with --overwrite")
    if not path.exists() and (run_dir / "train.log").exists():
        raise FileNotFoundError(f"checkpoint not found: {path}; the run stopped before its first checkpoint: start "
                                "it again without --resume")
    return load(path, required=("step", "config", "student", "teacher", "optimizer"))


def finished_result(path, steps):
    """The result in a run's metrics.json when it is this run's: written at the end of a run
    of ``steps`` steps (not of a shorter run that a resume took further, nor cut off mid-write
    by an older version), else None and the test runs again."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("config", {}).get("steps") == steps else None


def set_aside_shorter_result(path):
    """A metrics.json that a resume takes further (``steps=`` raised) becomes
    metrics_at_step_N.json: read as the run's while it trains on, it named a best.pt that the
    extended run has since replaced."""
    try:
        steps = json.loads(path.read_text()).get("config", {}).get("steps")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(steps, int):  # else not a run's result: left as it is
        path.replace(path.with_name(f"metrics_at_step_{steps}.json"))


# Settings a resumed run may change: they touch neither the model's shape, the data nor the
# random stream. (device may change float rounding: AMP and the bank's dtype follow it.)
RESUMABLE = ("steps", "eval_every", "image_every", "num_workers", "device")


def check_resumable(saved, config):
    """Raise ValueError naming the settings of ``config`` that differ from the ``saved``
    dict outside ``RESUMABLE`` and the settings its method never reads (``UNUSED_BY``)."""
    given, defaults = dataclasses.asdict(config), dataclasses.asdict(TrainConfig())
    saved = {**defaults, **as_saved(saved)}
    for values in (given, saved):  # a data folder is the same folder whether named relative or absolute
        values["data"] = data_location(values["data"])
    free = RESUMABLE + UNUSED_BY.get(saved["method"], ())
    changed = [f"{key} ({saved[key]!r} saved, {given[key]!r} given)" for key in given
               if key not in free and given[key] != saved[key]]
    if changed:
        raise ValueError("a resumed run continues with its saved config, but these settings differ: "
                         + ", ".join(changed) + f". Leave them out; only {', '.join(RESUMABLE)} may change "
                         "on resume (or train a new run into another folder)")
