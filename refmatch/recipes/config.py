"""Training configuration: YAML file + ``key=value`` overrides over typed defaults."""
import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..bank_policies import POLICIES
from ..choices import check_choice, is_cpu_or_cuda
from ..data.folder import IGNORE_LABEL
from ..data.phantoms import CLASS_NAMES as PHANTOM_CLASSES
from ..pseudo_labels import check_mode
from .config_files import bundled_or_given, file_values, parsed_yaml
from .unet import NORMS

METHODS = ("supervised", "meanteacher-pl", "refmatch")
MAX_CLASSES = IGNORE_LABEL  # mask values 0..254 name classes; 255 is "ignore"
# (keys, test, what the test asks); NaN fails every test. labeled_fraction: see validate.
LIMITS = ((("steps", "batch_size", "unlabeled_batch_size", "eval_every", "image_every", "bank_capacity",
            "bank_refresh_every", "width", "image_size", "tap_size", "num_phantoms", "pl_k"),
           lambda value: value >= 1, ">= 1"),
          (("depth",), lambda value: value >= 2, ">= 2"),
          (("num_labeled", "min_test", "pl_start", "rampup_steps", "seed", "num_workers"), lambda value: value >= 0,
           ">= 0"),
          (("weight_decay", "pl_weight", "val_fraction", "test_fraction", "ema_decay", "confidence_threshold"),
           lambda value: 0 <= value < math.inf, ">= 0 and finite"),
          (("lr", "pl_temperature"), lambda value: 0 < value < math.inf, "> 0 and finite"),
          (("pl_threshold",), math.isfinite, "finite"),
          (("val_fraction", "test_fraction", "confidence_threshold"), lambda value: value <= 1, "<= 1"),
          # 1 would never be reached: the teacher a running mean of every step's student
          (("ema_decay",), lambda value: value < 1, "< 1"),
          # the recipe's bank is cosine: hard confidences (similarities) and soft ones (margins) are <= 1
          (("pl_threshold",), lambda value: value <= 1, "<= 1 (a higher one keeps no pseudo-label)"))
# Keys that take one number or a list of one per class (in the run's class order).
PER_CLASS = ("pl_threshold",)
# Settings a method never reads: a resumed run may differ in them (an earlier config's values).
REFMATCH_ONLY = ("tap_layers", "tap_size", "bank_capacity", "bank_refresh_every", "bank_policy", "pl_mode", "pl_k",
                 "pl_temperature", "pl_threshold", "pl_consensus")
UNUSED_BY = {"supervised": REFMATCH_ONLY + ("confidence_threshold", "pl_weight", "pl_start", "rampup_steps",
                                            "unlabeled_batch_size"),
             "meanteacher-pl": REFMATCH_ONLY, "refmatch": ("confidence_threshold",)}


@dataclass
class TrainConfig:
    """Every knob of ``refmatch train``; YAML keys use these names."""

    data: str = "phantom"                 # "phantom" or a folder with images/ and masks/
    classes: list = field(default_factory=list)  # a folder's class names, mask values 0..C-1 in order;
                                          # empty: background and lung (binary masks)
    image_size: int = 128
    num_phantoms: int = 160
    num_labeled: int = 0                  # 0: use labeled_fraction
    labeled_fraction: float = 0.05
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    min_test: int = 0
    method: str = "refmatch"
    steps: int = 300
    batch_size: int = 8
    unlabeled_batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 16
    depth: int = 4
    norm: str = "instance"                # the U-Net's normalisation: "instance" or "batch" (unet.NORMS)
    ema_decay: float = 0.99               # the teacher's, reached after a 1 - 1/(step + 1) warm-up (recipes/ema.py)
    pl_weight: float = 1.0
    pl_start: int = 0                     # supervised-only warm-up steps before pseudo-labels
    rampup_steps: int = 100
    confidence_threshold: float = 0.9     # meanteacher-pl: keep teacher predictions above it
    tap_layers: list = field(default_factory=lambda: ["decoder.up2", "decoder.up1"])
    tap_size: int = 32                    # features are matched at this resolution
    bank_capacity: int = 4096             # per class
    bank_refresh_every: int = 25          # steps between re-embedding the labelled images
    bank_policy: str = "reservoir"        # which labelled pixels a full class keeps: a uniform sample
                                          # ("reservoir"), or the last images added ("ring")
    pl_mode: str = "soft"
    pl_k: int = 1
    pl_temperature: float = 0.1
    pl_threshold: float = 0.0             # refmatch: drop pseudo-labels less confident; or one per class
    pl_consensus: bool = False            # refmatch: keep a label only where the teacher's argmax agrees
    eval_every: int = 50
    image_every: int = 100
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True                      # CUDA only

    def validate(self):
        """Refuse settings that would fail later, after the data loaded and the run folder exists."""
        check_choice("method", self.method, METHODS)
        check_choice("bank_policy", self.bank_policy, POLICIES)
        self._validate_classes()
        check_choice("norm", self.norm, tuple(NORMS))
        self._validate_per_class()
        for names, test, asked in LIMITS:
            for name in names:
                value = getattr(self, name)
                for at, number in enumerate(value) if isinstance(value, list) else [(None, value)]:
                    if not test(number):
                        where = "" if at is None else f"[{at}] ({self.class_names()[at]})"
                        raise ValueError(f"{name}{where} must be {asked}, got {number}")
        if self.num_labeled == 0 and not 0 < self.labeled_fraction <= 1:
            raise ValueError(f"labeled_fraction must be in (0, 1] (num_labeled=0 takes it), "
                             f"got {self.labeled_fraction}")
        if self.val_fraction == 0:
            raise ValueError("val_fraction must be > 0: best.pt is the step with the best validation Dice, got 0")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 (training needs images), got "
                             f"{self.val_fraction} + {self.test_fraction}")
        if self.image_size % 2 ** (self.depth - 1) or self.image_size % self.tap_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**(depth-1) and by "
                             f"tap_size={self.tap_size} (for every method: refmatch pseudo-label taps any run's "
                             "teacher at its tap_size)")
        if self.image_size < 2 ** self.depth:  # normalisation needs more than one value per channel
            raise ValueError(f"depth={self.depth} is too deep for image_size={self.image_size}: the U-Net's deepest "
                             f"stage would be 1x1; use depth <= {(self.image_size // 2).bit_length()}")
        if self.method == "refmatch":
            from .unet import UNet

            with torch.device("meta"):  # names only: no memory, whatever the depth
                names = dict(UNet(1, 2, width=1, depth=self.depth).named_modules())
            # Features are tapped where a decoder stage ends, whose channels the bank sizes by.
            stages = [name for name in names if name.startswith("decoder.") and name.count(".") == 1]
            unknown = [name for name in self.tap_layers if name not in stages]
            if unknown or not self.tap_layers:
                raise ValueError(f"tap_layers must be a non-empty list of decoder stages of the U-Net at "
                                 f"depth={self.depth} ({', '.join(stages)}), got {self.tap_layers}")
        if self.device != "auto" and not is_cpu_or_cuda(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        check_mode(self.pl_mode, self.pl_k, names=("pl_mode", "pl_k"))
        return self

    def class_names(self):
        """The run's class names, in mask-value order (``data_setup.class_names``)."""
        from .data_setup import class_names

        return class_names(self)

    def _validate_per_class(self):
        names = self.class_names()
        for key in PER_CLASS:
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != len(names):
                raise ValueError(f"{key} must be one number or one per class ({len(names)}: {', '.join(names)}), "
                                 f"got {len(value)} values: {value}")

    def _validate_classes(self):
        if not self.classes:
            return
        if self.data == "phantom":
            raise ValueError(f"classes names a folder's mask values; phantoms have their own "
                             f"({', '.join(PHANTOM_CLASSES)}): leave classes out, got {self.classes}")
        # printable: a line break would start a line of its own in train.log and the reports
        names = [name for name in self.classes if isinstance(name, str) and name.strip() and name.isprintable()]
        if len(names) != len(self.classes) or len(set(names)) != len(names) or not 2 <= len(names) <= MAX_CLASSES:
            raise ValueError(f"classes must be 2 to {MAX_CLASSES} different, non-empty, printable names (mask values "
                             f"0, 1, ... in order; {IGNORE_LABEL} marks ignored pixels), got {self.classes}")


# Keys added after runs were saved with a default that changed since: the value such runs used.
SAVED_BEFORE_KEY = {"bank_policy": "ring", "norm": "batch"}


def as_saved(saved):
    """A saved run's config values as that run used them: a key it predates takes its
    ``SAVED_BEFORE_KEY`` value, or else (left out) today's default; None meant the default."""
    return {**SAVED_BEFORE_KEY, **{key: value for key, value in saved.items() if value is not None}}


def saved_config(saved):
    """The TrainConfig a checkpoint's "config" dict ran with (``as_saved``); ValueError naming
    keys this version does not know (a checkpoint of a newer refmatch)."""
    values = as_saved(saved)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ValueError(f"the checkpoint's config holds keys this refmatch does not know: {unknown} (written by a "
                         "newer version? update refmatch)")
    return TrainConfig(**values)


def comma_items(text):
    """'a=1, b=[2,3]' -> ['a=1', 'b=[2,3]']: comma-separated items, stripped; a comma inside
    [...] (nested too) belongs to its list value. ValueError for brackets that do not pair."""
    items, depth, start = [], 0, 0
    for at, char in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or (at == len(text) and depth):
            raise ValueError(f"{text!r} has a ] before its [" if depth < 0 else f"{text!r} leaves a [ unclosed")
        if char == "," and depth == 0:
            items.append(text[start:at].strip())
            start = at + 1
    return [item for item in items if item]


def unread_keys(config, keys):
    """Those of ``keys`` that ``config.method`` never reads (``UNUSED_BY``)."""
    return [key for key in keys if key in UNUSED_BY[config.method]]


def load_config(path=None, overrides=(), base=None):
    """TrainConfig from an optional YAML file and ``key=value`` strings (values parsed as
    YAML), applied over the defaults or over ``base`` (a saved run's config dict, read by
    ``as_saved``). A file's ``extends: other.yaml`` (relative to the file) takes that file's
    values first, so that a config holds only what it changes."""
    values = as_saved(base) if base is not None else {}
    if path is not None:
        values.update(file_values(bundled_or_given(Path(path))))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must be key=value, got {item!r}")
        key, value = item.split("=", 1)
        values[key] = parsed_yaml(value, f"override {item!r}")
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        named = [repr(name) + "".join(f" (did you mean {close!r}?)"
                                      for close in difflib.get_close_matches(name, known, n=1)) for name in unknown]
        raise ValueError(f"unknown config key(s) {', '.join(named)}; known: {sorted(known)}")
    config = TrainConfig()
    for key, value in values.items():
        default = getattr(config, key)
        if key in PER_CLASS and isinstance(value, list):
            value = [_as_float(number) for number in value]
            valid = all(type(number) is float for number in value)
        else:
            value = _as_float(value) if isinstance(default, float) else value
            valid = type(value) is type(default)
        if not valid:
            wanted = "a number or a list of numbers (one per class)" if key in PER_CLASS else type(default).__name__
            raise ValueError(f"{key} must be {wanted}, got {value!r}")
        setattr(config, key, value)
    return config.validate()


def _as_float(value):
    """An int as float, and a string YAML 1.1 left unread: it takes 1e-3 (no dot) as text;
    anything else (a bool, a list, other text) as it is, for the type check to refuse."""
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def data_location(data):
    """``data`` as a run keeps it: "phantom", or the folder's absolute path (not resolved through
    symlinks), so that a resume finds it from any working directory."""
    return data if data == "phantom" else os.path.abspath(data)
