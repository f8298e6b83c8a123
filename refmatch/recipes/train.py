"""The training loop shared by ``supervised``, ``meanteacher-pl`` and ``refmatch``.

Every method trains the student on labelled images (cross-entropy + Dice) and keeps an EMA
teacher; the two semi-supervised methods add a pseudo-label loss on strongly augmented
unlabelled images, ramped up, whose labels come from ``methods.pseudo_label_source``. All
randomness after model initialisation is drawn from one generator checkpointed with the run (a
reservoir bank draws from its own, saved in the bank's state), so ``resume`` continues
bit-exactly on the same device and CPU thread count (``provenance``)."""
import copy
import dataclasses
import logging
import time

import torch

from . import augment
from ..atomic_file import write_text_atomic
from .checkpoint import OVERWRITTEN, check_resumable, finished_result, load, load_latest, set_aside_shorter_result
from .data_setup import UNKNOWN, prepare_data
from .ema import ema_decay_at, ema_update
from .evaluation import evaluate, metrics_json, predict
from .interrupts import StopRequest
from .losses import pseudo_label_loss, rampup, supervised_loss
from .methods import IGNORE, check_pl_k, pseudo_label_source
from .provenance import run_environments
from .ranks import join_process_group, leave_process_group
from .run_context import RunContext
from .run_folders import check_not_a_dataset, claimed_run_folder, grid_name
from .unet import UNet
from .visual import training_grid


class Trainer:
    """Builds everything a run needs from a TrainConfig and trains it in ``run_dir``.
    ``resume=True`` continues ``run_dir/latest.pt`` (same config but for ``RESUMABLE``), or
    ``resume`` is that file's state already read (``load_latest``, as the CLI reads it for
    the config); a new run refuses a folder holding checkpoints unless ``overwrite``. It holds
    the run folder, log handlers and the teacher's feature hooks until ``close()``: build it in a
    ``with`` block (``fit`` may be called again after a stop, as long as it is open)."""

    def __init__(self, config, run_dir, resume=False, overwrite=False):
        resumed = load_latest(run_dir) if resume is True else (resume or None)
        if resumed is not None:
            check_resumable(resumed["config"], config)
            if config.steps < resumed["step"]:
                raise ValueError(f"steps={config.steps} is below the {resumed['step']} steps the run has trained: "
                                 "a resumed run can only go on (train a new run into another folder)")
        check_not_a_dataset(run_dir, config.data)
        # An overwritten run is deleted only once this one is built: bad data keeps it.
        device = join_process_group(config.device)
        try:
            with claimed_run_folder(run_dir, resumed is None, overwrite) as lock:
                self.config = config
                self.run = RunContext(run_dir, device, None if resumed is None else resumed["step"], lock)
                try:
                    with torch.random.fork_rng(devices=[]):  # the seed below, and the loaders' draws
                        self._build(resumed)
                except BaseException:
                    self.run.release_files()  # else a later run's lines would go to this log too
                    raise
        except BaseException:
            leave_process_group()
            raise

    def close(self):
        """Release the run folder, the log handlers and the teacher's feature hooks."""
        self.run.close()
        if getattr(self.pseudo, "tap", None) is not None:
            self.pseudo.tap.close()

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()

    def _build(self, resumed):
        config = self.config
        self.device = self.run.device
        logging.getLogger("refmatch").info("loading %s data", config.data)
        self.data = prepare_data(config, self.run.dir if self.run.is_main else None,
                                 reuse_splits=resumed is not None, from_main=self.run.from_main)
        self.num_classes = len(self.data.class_names)
        torch.default_generator.manual_seed(config.seed)  # the CPU's, in _build's fork_rng: the caller's stays
        self.student = UNet(1, self.num_classes, config.width, config.depth, config.norm).to(self.device)
        self.teacher = copy.deepcopy(self.student).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.model = self.run.wrap(self.student)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.pseudo = pseudo_label_source(config.method, self.teacher, config, self.num_classes, self.device)
        if self.pseudo is not None and not self.data.unlabeled.names:  # it would train as supervised, by name
            raise ValueError(f"method={config.method} learns from unlabelled images, but {config.data} leaves none "
                             f"(labeled_fraction={config.labeled_fraction}, num_labeled={config.num_labeled}; "
                             "unlabeled/ empty or missing): add images to unlabeled/, label fewer, or use "
                             "method=supervised")
        if config.method == "refmatch":
            check_pl_k(config, self.data.labeled.masks, self.num_classes)
        self.generator = torch.Generator().manual_seed(config.seed + 1000 * self.run.rank)
        self.step, self.best, self.seconds = 0, float("-inf"), 0.0
        logging.getLogger("refmatch").info(
            "data: %d labelled, %d unlabelled, %d val, %d test images; classes %s", len(self.data.labeled.names),
            len(self.data.unlabeled.names), len(self.data.val.names), len(self.data.test.names),
            ", ".join(self.data.class_names))
        self.environments = run_environments(resumed, self.device, warn=self.run.is_main)
        if resumed is not None:
            self._load(resumed)

    def state(self):
        return {"step": self.step, "best": self.best, "config": dataclasses.asdict(self.config),
                "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(), "train_seconds": self.seconds,
                "pseudo": self.pseudo.state_dict() if self.pseudo else {}, "environments": self.environments}

    def _load(self, state):
        """Continue from a ``state()`` (loaded on the CPU)."""
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.amp and state["scaler"]:  # a CPU leg saved a disabled scaler's empty state
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(self._rank_generator(state))
        if self.pseudo:
            self.pseudo.load_state_dict(state["pseudo"])
        self.step, self.best, self.seconds = state["step"], state["best"], state.get("train_seconds", 0.0)
        logging.getLogger("refmatch").info("resumed at step %d", self.step)

    def _rank_generator(self, state):
        """This rank's saved generator state: every rank draws its own batches."""
        states = state.get("rank_generators", [state["generator"]])  # saved before ranks kept theirs
        if len(states) != self.run.world:
            raise ValueError(f"the run was saved by {len(states)} process(es) and resumes with {self.run.world}: "
                             "resume with as many processes as it was trained with")
        return states[self.run.rank]

    def _save(self, *names):
        """The state into each of ``names`` (latest.pt, best.pt) with every rank's generator, so
        that either resumes (a collective: all ranks call it at the same step)."""
        state = self.state()
        state["rank_generators"] = self.run.gather(self.generator.get_state())
        for name in names:
            self.run.save(name, state)

    def _batch(self, split, size):
        index = torch.randint(split.images.shape[0], (size,), generator=self.generator)
        return split.images[index].to(self.device), split.masks[index].to(self.device)

    def train_step(self):
        """One optimiser step. Labelled and strongly augmented unlabelled images go
        through the student in one forward pass (one autograd graph per step, as DDP
        expects; with norm=batch they share batch statistics)."""
        config, logs = self.config, {}
        images, masks = self._batch(self.data.labeled, config.batch_size)
        images, masks = augment.weak(images, masks, self.generator)
        self._last_view = (images, masks, None)  # what the next grid shows until pseudo-labels run
        pseudo = None
        if self.pseudo is not None and self.data.unlabeled.images.shape[0] and self.step >= config.pl_start:
            if config.method == "refmatch" and (self.step - config.pl_start) % config.bank_refresh_every == 0:
                self.pseudo.refresh(self.data.labeled.images.to(self.device),
                                    self.data.labeled.masks.to(self.device), config.batch_size)
            unlabeled, hidden_truth = self._batch(self.data.unlabeled, config.unlabeled_batch_size)
            weak_view, hidden_truth = augment.weak(unlabeled, hidden_truth, self.generator, outside=UNKNOWN)
            strong_view = augment.strong(weak_view, self.generator)
            pseudo = self.pseudo(weak_view)
            images = torch.cat([images, strong_view])
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = self.model(images)
            loss = supervised_loss(logits[:masks.shape[0]], masks, IGNORE)
            logs["loss/supervised"] = loss.item()
            if pseudo is not None:
                unlabeled_loss = pseudo_label_loss(logits[masks.shape[0]:], pseudo.labels, IGNORE)
                weight = config.pl_weight * rampup(self.step - config.pl_start, config.rampup_steps)
                loss = loss + weight * unlabeled_loss
        if pseudo is not None:
            known = (hidden_truth != UNKNOWN) & (hidden_truth != IGNORE)
            judged = (pseudo.labels != IGNORE) & known
            logs.update({"loss/pseudo_label": unlabeled_loss.item(), "pseudo/weight": weight,
                         "pseudo/kept_ratio": pseudo.kept_fraction.item()})
            if bool(judged.any()):
                logs["pseudo/accuracy"] = (pseudo.labels == hidden_truth)[judged].float().mean().item()
            for value, name in list(enumerate(self.data.class_names))[1:]:  # the background dominates accuracy
                truth = hidden_truth == value
                if bool(truth.any()):  # the share of the class's hidden pixels labelled as it (dropped: missed)
                    logs[f"pseudo/recall/{name}"] = (pseudo.labels == value)[truth].float().mean().item()
            self._last_view = (weak_view, hidden_truth, pseudo)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.teacher, self.student, ema_decay_at(self.step, config.ema_decay))
        logs["loss/total"] = loss.item()
        return logs

    def validate(self):
        """Validation metrics; saves best.pt, then latest.pt (best first: a run killed between
        them resumes from best.pt, load_latest)."""
        metrics = evaluate(self.teacher, self.data.val, self.data.class_names, self.device)
        improved = metrics["mean_dice"] > self.best
        self.best = max(self.best, metrics["mean_dice"])
        self._save(*(["best.pt"] if improved else []), "latest.pt")  # one collective on every rank
        return metrics

    def save_images(self):
        """A grid of the last step's images: the unlabelled ones with their pseudo-labels and
        confidence (hidden truth beside), else the labelled ones."""
        images, truth, pseudo = self._last_view
        count = min(4, images.shape[0])
        prediction = predict(self.teacher, images[:count], self.device)
        extra = (pseudo.labels[:count].cpu(), pseudo.confidence[:count].cpu()) if pseudo is not None else (None, None)
        self.run.image(grid_name(self.step), self.step, training_grid, images[:count].cpu(),
                       truth[:count].cpu(), prediction, *extra, IGNORE, self.data.class_names)

    def fit(self, stop_at=None):
        """Train to ``config.steps`` (or ``stop_at``), then test the best checkpoint. Ctrl-C,
        SIGTERM, SIGUSR1 or SIGHUP stops after the current step (on every rank), saves latest.pt
        and raises KeyboardInterrupt (the others: SystemExit 128 + the signal); ``stop_at``
        returns None instead."""
        try:
            return self._fit(stop_at)
        except Exception as error:  # train.log says how the run ended, as it says for a stop
            self.run.log_failure(f"failed at step {self.step}: {type(error).__name__}: {error}")
            raise

    def _fit(self, stop_at):
        config, started, seconds_before = self.config, time.time(), self.seconds
        finished = finished_result(self.run.dir / "metrics.json", config.steps)
        if self.step == config.steps and finished is not None:  # resumed as it ended: its result stands
            logging.getLogger("refmatch").info("the run finished at step %d: %s stands", self.step,
                                               self.run.dir / "metrics.json")
            return finished
        if self.run.is_main:
            set_aside_shorter_result(self.run.dir / "metrics.json")
        last = config.steps if stop_at is None else min(config.steps, stop_at)
        stop, interrupted = StopRequest(), False
        with stop.catching():  # to the end of the save below, which a signal must not cut
            pseudo_labels_later = (self.pseudo is not None and self.data.unlabeled.images.shape[0] > 0
                                   and self.step < config.pl_start < last)  # as train_step starts them
            for _ in self.run.progress(range(self.step, last), config.pl_start if pseudo_labels_later else None):
                logs = self.train_step()
                self.step += 1
                self.run.scalars(logs, self.step)
                if self.step % config.image_every == 0:  # before the checkpoint: a kill here redoes it
                    self.save_images()
                if self.step % config.eval_every == 0 or self.step == config.steps:
                    self.seconds = seconds_before + time.time() - started  # resumed runs add up their parts
                    self.run.scalars({f"val/{k}": v for k, v in _flat(self.validate()).items()}, self.step)
                interrupted = self.run.on_any_rank(stop.signal is not None)  # every rank decides alike
                if interrupted:
                    stop.signal = stop.signal or "a signal on another rank"
                    break
            self.seconds = seconds_before + time.time() - started
            stopping = self.step < config.steps or interrupted  # a signal in the last step stops before the test
            if stopping:
                self._save("latest.pt")
        if stopping:
            logging.getLogger("refmatch").info("stopped at step %d of %d (%s), saved to %s; continue with --resume",
                                               self.step, config.steps, stop.signal or f"--stop-at {stop_at}",
                                               self.run.dir / "latest.pt")
            stop.raise_it()
            return None
        return self.finish()

    def finish(self):
        path = self.run.dir / "best.pt"
        # It was saved (by rank 0: other ranks may have no folder): testing the last state would pass for it.
        if self.run.is_main and not path.exists() and self.best > float("-inf"):
            aside = " (an --overwrite stopped part way keeps it in .overwritten/)" if \
                (self.run.dir / OVERWRITTEN / "best.pt").exists() else ""
            raise FileNotFoundError(f"{path} is gone{aside}: the run's best checkpoint (validation mean Dice "
                                    f"{self.best:.4f}) is what it tests; put it back, then --resume")
        best = load(path, self.device) if path.exists() else self.state()
        self.teacher.load_state_dict(best["teacher"])
        test = evaluate(self.teacher, self.data.test, self.data.class_names, self.device)
        size = self.config.image_size
        result = {"method": self.config.method, "best_step": best["step"], "val_mean_dice": self.best,
                  "test": test, "resolution": f"training ({size}x{size})", "model": "EMA teacher",
                  "train_seconds": self.seconds, "config": dataclasses.asdict(self.config),
                  "environments": self.environments}
        if self.run.is_main:
            write_text_atomic(self.run.dir / "metrics.json", metrics_json(result))
        if len(self.data.test.images):
            logging.getLogger("refmatch").info("test mean Dice %.4f, mean IoU %.4f (best step %d)",
                                               test["mean_dice"], test["mean_iou"], best["step"])
        else:  # metrics.json holds null for each test figure
            logging.getLogger("refmatch").info("no test images (test_fraction=0, min_test=0): no test metrics "
                                               "(best step %d)", best["step"])
        return result


def _flat(metrics):
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat
