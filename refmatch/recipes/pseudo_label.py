"""``refmatch pseudo-label``: reference-guided pseudo-labels for a folder of images.

The unlabelled images stream through in batches (memory stays flat however many there are),
and each image's files are written as soon as its batch is labelled: ``labels/`` last, so a
``labels/`` file marks a finished image. ``pseudo-label.json`` records what the folder holds
and whether it is complete; ``--resume`` continues an interrupted folder where it stopped.
"""
import argparse
import dataclasses
import errno
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..atomic_file import temporaries, write_text_atomic
from ..bank_policies import POLICIES
from ..choices import at_least, listing
from .evaluation import metrics_json
from .pseudo_label_files import reads_as_binary_mask, save_pseudo_label

RECORD = "pseudo-label.json"  # what a pseudo-label folder holds, and whether it is complete
RECORD_SECONDS = 30  # the record's "written" rewritten this often while a folder is labelled
OUTPUTS = ("labels", "confidence", "overlays")
WRITE_TEST = ".refmatch-write-test"  # touched and removed: is OUT writable, before the bank is built
BANK_SETTINGS = ("bank_capacity", "bank_policy")  # the run's, or --bank-capacity / --bank-policy
# The run's settings that shape the labels, recorded so that a folder says how it was labelled.
LABEL_SETTINGS = ("tap_layers", "tap_size", "pl_mode", "pl_k", "pl_temperature", "pl_threshold", "pl_consensus")
CONFIDENCE = {"hard": "cosine similarity of the nearest reference, 0..255 for 0..1 (below 0: 0)",
              "soft": "margin between the two most probable classes, 0..255 for 0..1"}


def pseudo_label_main(argv=None):
    """``refmatch pseudo-label``: a run's teacher and bank label a folder of images, as PNGs."""
    parser = argparse.ArgumentParser(prog="refmatch pseudo-label",
                                     description="Reference-guided pseudo-labels for a folder of images.")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a refmatch train run's best.pt or latest.pt (its teacher and settings)")
    parser.add_argument("--labeled", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument("--unlabeled", type=Path, required=True,
                        help="folder of PNG images (or its images/; not a dataset folder with unlabeled/ too)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for labels/, confidence/ and pseudo-label.json (what it holds and how it "
                             "was labelled)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted OUT: skip the images it has finished (same checkpoint, "
                             "folders and bank settings)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds pseudo-labels")
    parser.add_argument("--bank-capacity", type=at_least(1),
                        help="labelled pixels the bank keeps per class (default: the run's bank_capacity)")
    parser.add_argument("--bank-policy", choices=POLICIES,
                        help="which labelled pixels a full class keeps (default: the run's bank_policy; ring: "
                             "the last images' only, reservoir: a uniform sample)")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    from .cli import check_folder_argument
    from .run_lock import LOCK_NAME, locked_folder

    check_folder_argument(args.out, "--out")
    try:  # one process per OUT: a second would mix checkpoints, or delete the first's temporary files
        with locked_folder(args.out, (WRITE_TEST,)):  # the rest is written by rename: a link is replaced
            return _label_folder(args)
    except OSError as error:  # the folder and its lock file are the first things written
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or \
                error.filename not in (str(args.out), str(args.out / LOCK_NAME)):
            raise
        raise PermissionError(f"cannot write into {args.out}: {error.strerror}") from None


def _refuse_another_bank(args, previous, bank):
    """ValueError where ``bank`` ({setting: value}) differs from the one OUT was labelled with."""
    changed = [f"--{key.replace('_', '-')} {previous[key]}" for key, value in bank.items()
               if previous.get(key) is not None and previous[key] != value]
    if changed:
        raise ValueError(f"--resume: {args.out} was labelled with a bank of {', '.join(changed)}: pass the same, or "
                         "--overwrite")


def _label_folder(args):
    """``pseudo_label_main``'s work, in an OUT this process holds."""
    from ..data.folder import FolderDataset, png_names, scan_folder
    from .cli import checkpoint_teacher, status
    from .data_setup import (check_folder_fits_classes, check_masks, dark_images, load_split, model_class_names,
                             warn_if_dark)
    from .interrupts import noted_stop, worker_ignores_stops
    from .methods import IGNORE, ReferencePseudoLabels
    from .progress import progress_bar
    from .provenance import environment

    folder = image_folder(args.unlabeled)
    if not folder.is_dir():
        raise FileNotFoundError(f"--unlabeled {args.unlabeled}: no such folder")
    names = png_names(folder)
    if not names:
        raise FileNotFoundError(f"no PNG images in {folder}")
    record = {**_sources(args.checkpoint, args.labeled, folder), "images": len(names), "written": 0,
              "complete": False}
    previous = _previous(args.out)
    done = _finished_before(args, previous, record, names)  # refuses an occupied OUT before the bank is built
    if done == set(names):  # every image has its labels/ file (a run killed after its last, say)
        _refuse_another_bank(args, previous, {key: getattr(args, key) for key in BANK_SETTINGS
                                              if getattr(args, key) is not None})  # the flags given: no model read
        if not previous.get("complete"):
            write_text_atomic(args.out / RECORD, metrics_json({**previous, **record, "written": len(names),
                                                                 "complete": True}))
        print(f"{args.out} is complete: {len(names)} images, nothing to do")
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config, classes = checkpoint_teacher(args.checkpoint, device)
    config = dataclasses.replace(config, bank_capacity=args.bank_capacity or config.bank_capacity,
                                 bank_policy=args.bank_policy or config.bank_policy)
    bank = {key: getattr(config, key) for key in BANK_SETTINGS}  # as used: a flag naming the run's is no change
    if done:
        _refuse_another_bank(args, previous, bank)
    record.update(bank, classes=model_class_names(config, classes), confidence=CONFIDENCE[config.pl_mode],
                  settings={key: getattr(config, key) for key in LABEL_SETTINGS}, seed=config.seed,
                  environment=environment(device))  # a reservoir bank draws from the seed
    labeled = load_split(FolderDataset(args.labeled, scan_folder(args.labeled)["labeled"], size=config.image_size,
                                       num_classes=classes, classes_from=f"the model of {args.checkpoint}"),
                        config.num_workers, config.image_size)
    check_folder_fits_classes(labeled, classes, args.labeled)
    check_masks([labeled], record["classes"], args.labeled)  # a class no mask holds: never labelled
    warn_if_dark(dark_images(labeled.images, labeled.names), args.labeled)
    todo = [name for name in names if name not in done]
    status(f"loaded {len(labeled.names)} labelled images (bank: {config.bank_policy}, {config.bank_capacity} "
           f"pixels per class); labelling {len(todo)} images of {folder}"
           + (f" ({len(done)} finished before)" if done else ""))
    source = ReferencePseudoLabels(model, config, classes, device)
    source.refresh(labeled.images.to(device), labeled.masks.to(device), config.batch_size)
    if args.overwrite:  # only now that the checkpoint and both folders have loaded
        _clear(args.out)
    for sub in OUTPUTS:
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    # Written before the first image (a failed setup leaves a finished folder's record alone) and
    # after the last or a stop: how far the folder got, and the share of pixels kept in the
    # images it counted (a killed run's last images are finished but uncounted).
    previous = previous if done else {}  # --overwrite's record is gone
    counted = previous.get("kept_counted", previous.get("written", 0)) if "kept_percent" in previous else 0
    record.update(written=len(done), kept_percent=previous.get("kept_percent", 0.0),
                  kept_counted=min(counted, len(done)),
                  read_as_binary_masks=_binary_before(args.out, previous, done, classes))
    write_text_atomic(args.out / RECORD, metrics_json(record))
    unlabeled = DataLoader(FolderDataset(folder.parent, todo, size=config.image_size, subfolder=folder.name,
                                         with_masks=False), batch_size=config.batch_size,
                           num_workers=config.num_workers, shuffle=False, worker_init_fn=worker_ignores_stops)
    bar = progress_bar(len(names), "pseudo-label", initial=len(done), lines=True)
    dark_warned, next_record = False, time.monotonic() + RECORD_SECONDS
    try:
        for batch in unlabeled:
            if not dark_warned:  # once, at the first batch that holds any: a warning per batch would flood
                dark = dark_images(batch["image"], batch["name"])
                warn_if_dark(dark, f"{folder} (the first found)")
                dark_warned = bool(dark)
            pseudo = source(batch["image"].to(device))
            for name, labels, confidence in zip(batch["name"], pseudo.labels.cpu(), pseudo.confidence.cpu()):
                written = save_pseudo_label(folder / name, args.out, labels, confidence)
                if classes == 2 and reads_as_binary_mask(written):
                    record["read_as_binary_masks"].append(name)
                record["kept_counted"] += 1
                kept = 100 * float((labels != IGNORE).float().mean())
                record["kept_percent"] += (kept - record["kept_percent"]) / record["kept_counted"]  # a running mean
                record["written"] += 1
                bar.update(1)
            if time.monotonic() >= next_record:  # a kill -9 keeps a record of how far the folder got
                write_text_atomic(args.out / RECORD, metrics_json(record))
                next_record = time.monotonic() + RECORD_SECONDS
    except BaseException as error:
        bar.close()
        write_text_atomic(args.out / RECORD, metrics_json(record))
        stopped = not isinstance(error, Exception) or noted_stop() is not None  # a stop (its worker's error too)
        first = "" if stopped else "fix what the error names, then "
        status(f"stopped after {record['written']} of {len(names)} images: {args.out} is incomplete "
               f"({RECORD} says so); {first}add --resume to the command to finish it")
        raise
    bar.close()
    record["complete"] = True
    write_text_atomic(args.out / RECORD, metrics_json(record))
    binary = sorted(record["read_as_binary_masks"])
    if binary:  # a 0/255 file is a binary mask to every reader: its ignored pixels would become the class
        warnings.warn(f"{len(binary)} labels/ file(s) hold only 0 and {IGNORE} (no {record['classes'][1]} pixel "
                      f"kept; {listing(binary)}): as masks they read as 0/{IGNORE} binary masks, {IGNORE} the "
                      f"class; keep them out of a masks/ folder ({RECORD} lists them)")
    counted = "" if record["kept_counted"] == len(names) else f" of the {record['kept_counted']} images counted"
    print(f"wrote pseudo-labels of {len(names)} images to {args.out} at their own sizes (labels: class "
          f"indices, {IGNORE} where none was kept; kept {record['kept_percent']:.1f} % of pixels{counted}; {RECORD})")
    return record


def _previous(out):
    """The record an earlier run left in ``out``, or {}."""
    path = out / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _sources(checkpoint, labeled, unlabeled):
    """What a folder's pseudo-labels come from, as its record keeps it: absolute paths (a resume
    may name them relatively, from elsewhere) and the checkpoint's size and modification time (a
    best.pt that went on training is another teacher)."""
    stat = Path(checkpoint).stat() if Path(checkpoint).is_file() else None
    return {"checkpoint": str(Path(checkpoint).resolve()), "labeled": str(Path(labeled).resolve()),
            "unlabeled": str(Path(unlabeled).resolve()),
            "checkpoint_file": None if stat is None else [stat.st_size, stat.st_mtime_ns]}


def _binary_before(out, previous, done, classes):
    """The finished images (``done``) whose labels/ files read as binary masks: as the record
    says, or for a record of an older refmatch, which has no such list, read from the files."""
    if "read_as_binary_masks" in previous or classes != 2:
        return [name for name in previous.get("read_as_binary_masks", []) if name in done]
    from PIL import Image

    def values(name):
        with Image.open(out / "labels" / name) as image:
            return set(np.unique(np.array(image)).tolist())
    return [name for name in sorted(done) if reads_as_binary_mask(values(name))]


def _finished_before(args, previous, record, names):
    """The names of ``names`` that an earlier run finished in ``args.out`` and this one skips (a
    set; all of them: nothing to do). An OUT holding pseudo-labels (a record) takes --resume (the
    same checkpoint, unchanged, and folders; the bank's settings are compared once the checkpoint
    has loaded) or --overwrite (its outputs are deleted once the new
    run has loaded); one holding other files in labels/, confidence/ or overlays/ is refused, and
    an unwritable one (its lock file may be writable) before any work. ``previous``: the
    record found in OUT ({} for none)."""
    foreign = [sub for sub in OUTPUTS if (args.out / sub).is_dir() and set((args.out / sub).iterdir())
               - set(temporaries(args.out / sub))]
    if foreign and not previous:
        raise FileExistsError(f"{args.out} holds {', '.join(foreign)} that refmatch pseudo-label did not write (no "
                              f"{RECORD}): name another --out")
    if previous and not (args.resume or args.overwrite):
        raise FileExistsError(f"{args.out} holds pseudo-labels: finish them with --resume, or start over with "
                              "--overwrite")
    if args.resume:
        if not previous:
            raise FileNotFoundError(f"--resume: {args.out / RECORD} not found; there is nothing to continue")
        if record["checkpoint_file"] is None:
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        earlier = {key: str(Path(previous.get(key, "")).resolve()) for key in ("checkpoint", "labeled", "unlabeled")}
        differ = [f"{key} ({previous.get(key)})" for key in earlier if earlier[key] != record[key]]
        same_path = earlier["checkpoint"] == record["checkpoint"]
        if same_path and previous.get("checkpoint_file", record["checkpoint_file"]) != record["checkpoint_file"]:
            differ.append("checkpoint file (its size or time changed since: trained on?)")
        if differ:
            raise ValueError(f"--resume: {args.out} was labelled with another {', '.join(differ)}: pass the same, "
                             "or --overwrite")
        for sub in OUTPUTS:  # a kill mid-write left them (this process holds OUT: no other run writes them)
            for stale in temporaries(args.out / sub):
                stale.unlink(missing_ok=True)
        labelled = {path.name for path in (args.out / "labels").glob("*") if path.is_file()}
        stale = sorted(labelled - set(names))
        if stale:
            raise ValueError(f"--resume: {args.out / 'labels'} holds {len(stale)} file(s) of images no longer in "
                             f"{record['unlabeled']} (e.g. {stale[0]}): --overwrite to label the folder as it is")
        return labelled & set(names)
    probe = args.out / WRITE_TEST
    try:  # refused before the data load and the bank
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write into {args.out}: {error.strerror}") from None
    return set()


def _clear(out):
    """Delete an earlier run's outputs and record in ``out`` (--overwrite)."""
    for sub in OUTPUTS:
        if (out / sub).is_symlink():
            (out / sub).unlink()
        elif (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / RECORD).unlink(missing_ok=True)


def image_folder(root):
    """The images of a folder: its images/ subfolder where there is one, else the folder itself.
    Raises ValueError for a dataset folder that has unlabeled/ beside images/: which to label?"""
    root = Path(root)
    if (root / "images").is_dir() and (root / "unlabeled").is_dir():
        raise ValueError(f"--unlabeled {root} holds both images/ and unlabeled/: name the folder to label "
                         f"({root / 'unlabeled'} for its unlabelled images)")
    return root / "images" if (root / "images").is_dir() else root
