"""``refmatch compare-pseudo-labels``: which pseudo-label setting suits a dataset?

Takes the teacher of a training run, builds its reference bank from the run's
labelled images and scores several ``PseudoLabeler`` settings on the run's
unlabelled training images whose masks were hidden: accuracy of the kept
pixels, the kept fraction, and recall and Dice per class. The setting
``method=meanteacher-pl`` scores the teacher's own confident predictions, the
baseline. Every setting starts from the plain pseudo-label defaults
(``PLAIN_PSEUDO_LABELS``, and the run's tap_size), not from the run's values,
so its name lists all it changes. Writes a table (markdown and JSON) and a picture: image, hidden truth,
then each setting.
"""
import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch

from ..atomic_file import write_text_atomic
from .checkpoint import load, saved_teacher
from .cli import check_output_file, status
from .config import TrainConfig, comma_items, load_config, saved_config, unread_keys
from .data_setup import UNKNOWN, data_of_run, prepare_data
from .evaluation import metrics_json
from .methods import IGNORE, check_pl_k, pseudo_label_source
from .progress import progress_bar

DEFAULT_SETTINGS = ["method=meanteacher-pl", "pl_mode=soft,pl_k=1", "pl_mode=hard", "pl_mode=soft,pl_k=8",
                    "pl_mode=hard,tap_size=64"]
# TrainConfig's defaults of the knobs that shape pseudo-labels; tap_size stays the run's (its
# image_size must be a multiple of it).
PLAIN_PSEUDO_LABELS = {key: getattr(TrainConfig, key) for key in (
    "confidence_threshold", "pl_mode", "pl_k", "pl_temperature", "pl_threshold", "pl_consensus")}
# What a setting may change: the keys that shape pseudo-labels. Others (image_size, width, data, ...)
# would either fail against the run's teacher or change nothing under a name that says they did.
SETTING_KEYS = ("method", *PLAIN_PSEUDO_LABELS, "tap_size", "tap_layers", "bank_capacity", "bank_policy")


def parse_setting(text, config):
    """'key=value,key=value' -> ``config`` with ``PLAIN_PSEUDO_LABELS`` and then those values
    (parsed as in ``refmatch train``); the method is "refmatch" unless the setting names another."""
    try:
        items = comma_items(text)
    except ValueError as error:
        raise ValueError(f"setting {error}") from None
    keys = [item.split("=", 1)[0].strip() for item in items]
    other = [key for key in keys if key not in SETTING_KEYS]
    if other:
        raise ValueError(f"setting {text!r}: {', '.join(other)} does not shape pseudo-labels; a setting changes "
                         f"{', '.join(SETTING_KEYS)}")
    if not any(item.startswith("method=") for item in items):
        items.append("method=refmatch")
    try:
        setting = load_config(None, items, base={**dataclasses.asdict(config), **PLAIN_PSEUDO_LABELS})
    except ValueError as error:
        raise ValueError(f"setting {text!r}: {error}") from None
    if setting.method == "supervised":
        raise ValueError(f"setting {text!r}: method=supervised makes no pseudo-labels")
    unread = unread_keys(setting, keys)
    if unread:  # the row's name would claim a change that changes nothing
        raise ValueError(f"setting {text!r}: method={setting.method} never reads {', '.join(unread)}"
                         + (" (its pseudo-labels are the teacher's predictions above confidence_threshold)"
                            if setting.method == "meanteacher-pl" else ""))
    return setting


def default_settings(config):
    """``DEFAULT_SETTINGS`` this run can take, each a distinct setting (``pl_mode=hard`` and
    ``pl_mode=hard,tap_size=64`` are one for a run at tap_size 64); says which it leaves out."""
    kept, seen = [], []
    for text in DEFAULT_SETTINGS:
        try:
            setting = parse_setting(text, config)
        except ValueError as error:
            status(f"left out the default {error}")
            continue
        if setting in seen:
            status(f"left out the default setting {text!r}: the same as {kept[seen.index(setting)]!r} here")
            continue
        kept.append(text)
        seen.append(setting)
    return kept


def plain_pseudo_labels_text(tap_size=None):
    """``PLAIN_PSEUDO_LABELS`` (and the run's ``tap_size``) as key=value, spelled as a setting would."""
    values = {**PLAIN_PSEUDO_LABELS, "tap_size": "the run's" if tap_size is None else tap_size}
    return ", ".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                     for key, value in values.items())


def score(labels, truth, num_classes):
    """Pixel statistics of pseudo-labels [n, H, W] against truth [n, H, W] (IGNORE: not kept in
    labels, ignored in truth; such truth pixels count nowhere)."""
    known = truth != IGNORE
    labels, truth = labels[known], truth[known]
    kept = labels != IGNORE
    row = {"kept": kept.float().mean().item(), "accuracy": _ratio((labels == truth)[kept].sum(), kept.sum())}
    for cls in range(num_classes):
        predicted, actual = labels == cls, truth == cls
        overlap = (predicted & actual).sum()
        row[f"recall_{cls}"] = _ratio(overlap, actual.sum())  # undefined (NaN) where the truth lacks the class
        row[f"dice_{cls}"] = _ratio(2 * overlap, predicted.sum() + actual.sum())
    return row


def _ratio(part, whole):
    """part / whole as a float; NaN for 0 / 0 (undefined, printed "–"), not a score of 0."""
    return part.item() / whole.item() if whole.item() else float("nan")


def compare(run_dir, settings, num_images, batch_size=8, checkpoint="best.pt", state=None, data=None):
    """Score each setting; returns (rows, class names, images [n, 1, H, W], truth [n, H, W],
    {setting: labels [n, H, W]}). ``state``: the checkpoint, when the caller has read it;
    ``data``: where the run's data is now (``data_of_run``)."""
    if not (Path(run_dir) / "splits.json").is_file():
        raise FileNotFoundError(f"{Path(run_dir) / 'splits.json'} not found: the settings are scored on the "
                                "run's own unlabelled images")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = load(Path(run_dir) / checkpoint) if state is None else state
    config = saved_config(state["config"])
    config = dataclasses.replace(config, data=data_of_run(config, data))
    parsed = [(text, parse_setting(text, config)) for text in settings]  # bad settings fail before any work
    data = prepare_data(config, run_dir, reuse_splits=True)  # the run's own split, left as it is
    num_classes = len(data.class_names)
    for _, setting in parsed:
        if setting.method == "refmatch":
            check_pl_k(setting, data.labeled.masks, num_classes)
    teacher, _ = saved_teacher(state, Path(run_dir) / checkpoint, device, num_classes)
    hidden = (data.unlabeled.masks != UNKNOWN).flatten(1).all(dim=1).nonzero()[:, 0][:num_images]
    if hidden.numel() == 0:
        raise ValueError(f"the run {run_dir} has no unlabelled images with hidden masks to score against")
    images, truth = data.unlabeled.images[hidden], data.unlabeled.masks[hidden]
    rows, outputs = [], {}
    bar = progress_bar(len(settings) * images.shape[0], "pseudo-labels", lines=True)
    for name, setting in parsed:
        source = pseudo_label_source(setting.method, teacher, setting, num_classes, device)
        source.refresh(data.labeled.images.to(device), data.labeled.masks.to(device), batch_size)
        source(images[:batch_size].to(device))  # untimed: a first call's setup is not the setting's cost
        begin, labels = time.perf_counter(), []
        for start in range(0, images.shape[0], batch_size):
            labels.append(source(images[start:start + batch_size].to(device)).labels.cpu())
            bar.update(labels[-1].shape[0])
        seconds = time.perf_counter() - begin
        outputs[name] = torch.cat(labels)
        rows.append({"setting": name, **score(outputs[name], truth, num_classes),
                     "ms_per_image": 1e3 * seconds / images.shape[0]})
        if hasattr(source, "tap"):
            source.tap.close()
    bar.close()
    return rows, data.class_names, images, truth, outputs


def markdown(rows, class_names):
    per_class = [f"{kind} {name}" for name in class_names for kind in ("recall", "Dice")]
    lines = ["| setting | kept | accuracy (kept) | " + " | ".join(per_class) + " | ms / image |",
             "|---" * (4 + len(per_class)) + "|"]
    for row in rows:
        values = [row[f"{kind}_{cls}"] for cls in range(len(class_names)) for kind in ("recall", "dice")]
        lines.append(f"| {row['setting']} | {row['kept']:.3f} | {_cell(row['accuracy'])} | "
                     + " | ".join(map(_cell, values)) + f" | {row['ms_per_image']:.1f} |")
    return "\n".join(lines)


def _cell(value):
    return "–" if math.isnan(value) else f"{value:.4f}"


def picture(path, images, truth, outputs, class_names, count=4):
    """Rows: images; columns: image, hidden truth, then each setting's pseudo-labels
    (grey: not kept), titled one config change per line, over a legend of the classes."""
    from .visual import class_legend, colorize, gray, save_grid

    rows = [[gray(images[i, 0], 0.0, 1.0), colorize(truth[i], IGNORE),
             *(colorize(labels[i], IGNORE) for labels in outputs.values())] for i in range(min(count, len(images)))]
    save_grid(path, rows, ["image", "truth", *outputs], class_legend(class_names))


def main(argv=None):
    """``refmatch compare-pseudo-labels RUN``: each setting's pseudo-labels scored against hidden masks."""
    parser = argparse.ArgumentParser(prog="refmatch compare-pseudo-labels",
                                     description="Which pseudo-label setting suits a dataset?")
    parser.add_argument("--run", type=Path, required=True, help="run folder with best.pt and splits.json")
    parser.add_argument("--checkpoint", default="best.pt",
                        help="checkpoint file name inside the run folder (default: best.pt)")
    parser.add_argument("--setting", action="append", help="comma-separated key=value config changes from "
                        f"the plain pseudo-labels ({plain_pseudo_labels_text()}), not from the run's own settings; "
                        f"keys: {', '.join(SETTING_KEYS)} (repeatable; default: {' '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--images", type=int, default=64,
                        help="unlabelled images with hidden masks to score (>= 1; default 64)")
    parser.add_argument("--out", type=Path, help="folder for compare.md, compare.json and compare.png "
                        "(default: RUN/compare-pseudo-labels)")
    parser.add_argument("--data", help="where the run's data folder is now (default: the run's own)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    out = args.out or args.run / "compare-pseudo-labels"
    check_output_file(out / "compare.md", "--out")  # before the work; the folder is made after it
    try:
        state = load(args.run / args.checkpoint)  # read once: the teacher and the header's tap size
    except FileNotFoundError as error:  # a path given as for evaluate: frun/frun/best.pt not found
        raise FileNotFoundError(f"{error} (--checkpoint names a file inside --run: best.pt or latest.pt)") from None
    config = saved_config(state["config"])
    rows, class_names, images, truth, outputs = compare(args.run, args.setting or default_settings(config),
                                                        args.images, checkpoint=args.checkpoint, state=state,
                                                        data=args.data)
    table = markdown(rows, class_names)
    tap_size = config.tap_size
    header = (f"Pseudo-labels of {images.shape[0]} unlabelled images of {args.run} against their hidden masks.\n"
              f"Each setting changes only what it names from {plain_pseudo_labels_text(tap_size)}.\n\n")
    out.mkdir(parents=True, exist_ok=True)
    # The picture first (the slow part) and the JSON last: a stop keeps the earlier set, not a mix
    picture(out / "compare.png", images, truth, outputs, class_names)
    write_text_atomic(out / "compare.md", header + table + "\n")
    write_text_atomic(out / "compare.json", metrics_json({
        "run": str(args.run), "checkpoint": args.checkpoint, "classes": class_names, "images": images.shape[0],
        "plain_settings": {**PLAIN_PSEUDO_LABELS, "tap_size": tap_size}, "rows": rows}))
    print(header + table + f"\n\nwrote {out}/compare.md, compare.json and compare.png "
          "(columns: image, truth, then the settings in order)")
    return rows
