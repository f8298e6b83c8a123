"""Seeded labelled / unlabelled / val / test splits, saved as JSON next to a run.

From the labelled names (those with masks), test and then val are carved first;
of the remaining training names a few stay labelled and the rest become
"unlabeled": their masks are hidden from training but kept for measuring
pseudo-label accuracy. Truly unlabelled names (no mask at all) join "unlabeled".
Names are sorted before the seeded shuffle, so the split depends on the seed and
the set of names, not on the order they were listed in.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..atomic_file import write_atomic
from ..choices import listing

SPLIT_KEYS = ("labeled", "unlabeled", "val", "test")


def _check_fraction(name, value, allow_zero=True):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not (0 <= value <= 1) or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {value!r}")


def _distinct(names, what):
    names = [str(name) for name in names]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"{what} repeat name(s): {repeated[:5]}")
    return sorted(names)


def make_splits(labeled_names, unlabeled_names=(), *, seed, labeled_fraction=None, num_labeled=None,
                val_fraction=0.1, test_fraction=0.2, min_test=0):
    """Split names into {"labeled", "unlabeled", "val", "test"} (sorted lists) plus "seed".

    Of n labelled names, test takes max(min_test, round(test_fraction * n)) and val
    round(val_fraction * n); of the t training names left, ``num_labeled`` (or
    max(1, round(labeled_fraction * t))) stay labelled, the others go to
    "unlabeled" together with every name of ``unlabeled_names``. Give exactly one
    of ``num_labeled`` and ``labeled_fraction``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    labeled_names = _distinct(labeled_names, "labeled_names")
    unlabeled_names = _distinct(unlabeled_names, "unlabeled_names")
    both = sorted(set(labeled_names) & set(unlabeled_names))
    if both:
        raise ValueError(f"{len(both)} name(s) are both labelled and unlabelled: {listing(both)} (a folder's "
                         "images/ and unlabeled/ must not share file names: rename or remove one copy)")
    if (num_labeled is None) == (labeled_fraction is None):
        raise ValueError(f"give exactly one of num_labeled and labeled_fraction, got {num_labeled!r} "
                         f"and {labeled_fraction!r}")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if isinstance(min_test, bool) or not isinstance(min_test, int) or min_test < 0:
        raise ValueError(f"min_test must be an int >= 0, got {min_test!r}")
    n = len(labeled_names)
    tested = max(min_test, int(test_fraction > 0))
    if n < 1 + (val_fraction > 0) + tested:  # no fraction could split them
        validated = ", one to validate on" if val_fraction > 0 else ""
        raise ValueError(f"{n} labelled name(s): a split needs at least {1 + (val_fraction > 0) + tested} (one to "
                         f"train on{validated}{f', {tested} to test on' if tested else ''}): label more images")
    num_test = max(min_test, round(test_fraction * n))
    num_val = round(val_fraction * n)
    num_train = n - num_test - num_val
    for name, fraction, count in (("val_fraction", val_fraction, num_val), ("test_fraction", test_fraction, num_test)):
        if fraction > 0 and count == 0:  # a run would pick no best checkpoint, or test on nothing
            raise ValueError(f"{name}={fraction} of {n} labelled names rounds to no image: add images or raise "
                             f"{name}")
    if num_train < 1:
        raise ValueError(f"{n} labelled names leave no training images after {num_test} test and {num_val} val")
    if num_labeled is None:
        _check_fraction("labeled_fraction", labeled_fraction, allow_zero=False)
        num_labeled = max(1, round(labeled_fraction * num_train))
    elif isinstance(num_labeled, bool) or not isinstance(num_labeled, int) or not 1 <= num_labeled <= num_train:
        raise ValueError(f"num_labeled must be an int in [1, {num_train}] (the training names), got {num_labeled!r}")

    order = np.random.default_rng(seed).permutation(n)
    shuffled = [labeled_names[i] for i in order]
    test, val = shuffled[:num_test], shuffled[num_test:num_test + num_val]
    train = shuffled[num_test + num_val:]
    return {"labeled": sorted(train[:num_labeled]), "unlabeled": sorted(train[num_labeled:] + unlabeled_names),
            "val": sorted(val), "test": sorted(test), "seed": seed}


def save_splits(splits, path):
    """Write ``splits`` to JSON at ``path`` with its counts, atomically (``write_atomic``),
    so a reader never sees half a file."""
    record = {"seed": splits.get("seed"), "counts": {key: len(splits[key]) for key in SPLIT_KEYS}}
    record.update({key: list(splits[key]) for key in SPLIT_KEYS})
    write_atomic(path, lambda file: json.dump(record, file, indent=1), mode="w")


def load_splits(path):
    """The splits saved by ``save_splits``: {"labeled", "unlabeled", "val", "test", "seed"}."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        splits = {key: list(record[key]) for key in SPLIT_KEYS}
        counts = record["counts"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a splits file: {error!r}") from error
    wrong = [key for key in SPLIT_KEYS if counts.get(key) != len(splits[key])]
    if wrong:
        raise ValueError(f"{path}: the name lists of {wrong} do not match the recorded counts {counts}")
    splits["seed"] = record.get("seed")
    return splits
