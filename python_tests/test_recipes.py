"""Training recipe runs: a few steps of each method, resume, run folders, pseudo-label consensus, CLI
(the parts: test_recipe_parts.py; DDP: test_ddp_training.py)."""
import importlib.util
import json

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import load  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from refmatch.recipes.unet import UNet  # noqa: E402

TINY = ["data=phantom", "num_phantoms=24", "image_size=32", "width=4", "depth=3", "tap_size=16",
        "batch_size=2", "unlabeled_batch_size=2", "bank_capacity=512", "bank_refresh_every=2",
        "eval_every=2", "image_every=2", "rampup_steps=2", "num_workers=0", "labeled_fraction=0.2"]


@pytest.mark.parametrize("method", ["supervised", "meanteacher-pl", "refmatch"])
def test_a_few_steps_of_each_method(tmp_path, method):
    from refmatch.recipes.train import Trainer

    trainer = Trainer(load_config(None, TINY + [f"method={method}", "steps=4"]), tmp_path)
    try:
        result = trainer.fit()
    finally:
        trainer.run.close()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and 0 <= metrics["test"]["mean_dice"] <= 1
    assert result["best_step"] in (2, 4)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "latest.pt").exists()
    assert (tmp_path / "splits.json").exists() and (tmp_path / "train.log").exists()
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == ["step_000002.png", "step_000004.png"]
    if importlib.util.find_spec("tensorboard"):  # the same grids in TensorBoard, by step
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        assert [image.step for image in events.Images("images")] == [2, 4]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_resume_continues_the_run(tmp_path, device):
    """Bit-exact on the CPU; on a GPU (checkpoint loaded onto it) within float32 rounding."""
    from refmatch.recipes.train import Trainer

    def run(folder, stop_at=None, resume=False):
        trainer = Trainer(load_config(None, TINY + ["method=refmatch", "steps=6", f"device={device}"]), folder,
                          resume=resume)
        try:
            trainer.fit(stop_at=stop_at)
        finally:
            trainer.run.close()
        return trainer

    straight = run(tmp_path / "straight")
    stopped = run(tmp_path / "split", stop_at=3)
    resumed = run(tmp_path / "split", resume=True)
    exact = dict(rtol=0, atol=0) if device == "cpu" else {}
    # The step-2 validation score comes back, so a worse later step cannot take best.pt.
    assert stopped.best > float("-inf") and resumed.best == pytest.approx(straight.best, rel=0 if exact else 1e-4)
    if exact:
        assert load(tmp_path / "straight" / "best.pt")["step"] == load(tmp_path / "split" / "best.pt")["step"]
    for name, value in straight.student.state_dict().items():
        torch.testing.assert_close(value, resumed.student.state_dict()[name], **exact, msg=name)
    torch.testing.assert_close(straight.pseudo.bank.features, resumed.pseudo.bank.features, **exact,
                               equal_nan=True)  # empty slots hold NaN


def test_resume_takes_the_saved_config_and_names_settings_it_cannot_change(tmp_path):
    """As the README: a run with overrides, stopped, then resumed with --out and --resume
    only. A resume may lengthen the run; changing the method is refused by name."""
    from refmatch.__main__ import main

    run = tmp_path / "mt"
    main(["train", *TINY, "method=meanteacher-pl", "seed=1", "steps=4", "--out", str(run), "--stop-at", "2"])
    assert load(run / "latest.pt")["step"] == 2 and not (run / "metrics.json").exists()
    with pytest.raises(ValueError, match=r"method \('meanteacher-pl' saved, 'refmatch' given\)"):
        main(["train", "--out", str(run), "--resume", "method=refmatch"])
    first_seconds = load(run / "latest.pt")["train_seconds"]
    main(["train", "--out", str(run), "--resume", "steps=6"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["method"], metrics["config"]["seed"], metrics["config"]["steps"]) == ("meanteacher-pl", 1, 6)
    assert metrics["train_seconds"] > first_seconds > 0, "a resumed run adds up its parts"


def test_an_overwrite_that_fails_before_training_keeps_the_earlier_run(tmp_path):
    """--overwrite with inputs that fail (here a missing data folder) leaves the earlier run as
    it was; the failed run's log handlers are gone, so the next run's lines stay out of its log."""
    import logging

    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=2", "seed=0", "--out", str(run)])
    before = {path.relative_to(run): path.read_bytes() for path in run.rglob("*") if path.is_file()}
    handlers = list(logging.getLogger("refmatch").handlers)
    with pytest.raises(FileNotFoundError, match="missing/images not found"):
        main(["train", *TINY, "steps=2", f"data={tmp_path / 'missing'}", "--out", str(run), "--overwrite"])
    after = {path.relative_to(run): path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert after == before and not (run / ".overwritten").exists()
    assert logging.getLogger("refmatch").handlers == handlers


def test_a_new_run_keeps_off_an_earlier_runs_folder_unless_told_to_overwrite(tmp_path):
    """A folder holding checkpoints is refused (its work would be lost); --overwrite starts over
    with the new settings' splits. A folder with only a stale splits.json gets new splits."""
    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=2", "seed=0", "--out", str(run)])
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        main(["train", *TINY, "steps=2", "seed=1", "labeled_fraction=0.5", "--out", str(run)])
    main(["train", *TINY, "steps=2", "seed=1", "labeled_fraction=0.5", "--out", str(run), "--overwrite"])
    splits = json.loads((run / "splits.json").read_text())
    assert splits["seed"] == 1 and splits["counts"]["labeled"] == 8  # 3 at labeled_fraction=0.2
    for name in ("latest.pt", "best.pt", "metrics.json"):
        (run / name).unlink()
    main(["train", *TINY, "steps=2", "seed=2", "--out", str(run)])
    assert json.loads((run / "splits.json").read_text())["seed"] == 2


def test_consensus_keeps_reference_labels_where_the_teacher_agrees():
    from refmatch.data.phantoms import make_phantom
    from refmatch.recipes.methods import IGNORE, pseudo_label_source

    images, masks = zip(*(make_phantom(i, size=32) for i in range(6)))
    images, masks = torch.stack(images), torch.stack(masks).long()
    teacher = UNet(1, 4, width=4, depth=3).eval()
    sources = {}
    for consensus in (False, True):
        config = load_config(None, TINY + ["method=refmatch", "pl_mode=hard", f"pl_consensus={consensus}"])
        sources[consensus] = pseudo_label_source("refmatch", teacher, config, 4, "cpu")
        sources[consensus].refresh(images[:3], masks[:3], batch_size=2)
    plain, agreed = sources[False](images[3:]), sources[True](images[3:])
    teacher_labels = teacher(images[3:]).argmax(dim=1)
    agree = plain.labels == teacher_labels
    assert 0 < agree.float().mean() < 1, "an untrained teacher agrees with some pixels, not all"
    assert torch.equal(agreed.labels, torch.where(agree, plain.labels, IGNORE))
    assert agreed.kept_fraction.item() == pytest.approx(agree.float().mean().item())


def test_cli_end_to_end(tmp_path, capsys):
    from PIL import Image

    from refmatch.__main__ import main
    from refmatch.data.phantoms import make_phantom

    run = tmp_path / "run"
    main(["train", *TINY, "--out", str(run), "method=refmatch", "steps=2"])  # overrides on both sides
    assert "test_mean_dice" in capsys.readouterr().out
    labeled, unlabeled = tmp_path / "labeled", tmp_path / "unlabeled"
    for folder in (labeled / "images", labeled / "masks", unlabeled):
        folder.mkdir(parents=True)
    for i in range(3):
        image, mask = make_phantom(i, size=32)
        Image.fromarray((255 * image[0]).byte().numpy()).save(labeled / "images" / f"p{i}.png")
        Image.fromarray(mask.byte().numpy()).save(labeled / "masks" / f"p{i}.png")
        unlabeled_image = Image.fromarray((255 * make_phantom(10 + i, size=32)[0][0]).byte().numpy())
        unlabeled_image.resize((40, 48)).save(unlabeled / f"u{i}.png")  # not the model's 32 x 32
    out = tmp_path / "pseudo"
    main(["pseudo-label", "--checkpoint", str(run / "best.pt"), "--labeled", str(labeled),
          "--unlabeled", str(unlabeled), "--out", str(out)])
    for sub in ("labels", "confidence", "overlays"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["u0.png", "u1.png", "u2.png"]
        for path in (out / sub).iterdir():
            with Image.open(path) as written:
                assert written.size == (40, 48), "written at the input's size"
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(labeled), "--split", "all",
          "--out", str(tmp_path / "m.json")])
    assert "mean_dice" in json.loads((tmp_path / "m.json").read_text())
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(labeled), "--split", "all",
          "--resolution", "native", "--out", str(tmp_path / "native.json")])
    assert json.loads((tmp_path / "native.json").read_text())["resolution"] == "native (each mask file's size)"


def test_evaluate_scores_the_runs_test_split_by_default(tmp_path):
    """The default reproduces the test figures of metrics.json; another folder than the run's data
    is refused for the run's split (its names are not there), and a run without splits.json says so."""
    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=2", "--out", str(run)])
    trained = json.loads((run / "metrics.json").read_text())["test"]
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "phantom", "--out", str(tmp_path / "m.json")])
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["mean_dice"] == pytest.approx(trained["mean_dice"], abs=1e-6)
    (tmp_path / "other" / "images").mkdir(parents=True)
    (tmp_path / "other" / "masks").mkdir()
    with pytest.raises(ValueError, match="phantoms are generated at the run's image_size"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "phantom", "--resolution", "native"])
    with pytest.raises(ValueError, match="the run trained on phantom"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tmp_path / "other")])
    (run / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match="--split all"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "phantom"])


def test_resume_on_amp_takes_a_cpu_legs_empty_scaler(tmp_path):
    """A leg trained without AMP saved a disabled GradScaler's empty state; a leg with AMP (a GPU)
    starts its scaler afresh instead of failing on it."""
    from refmatch.recipes.train import Trainer

    config = load_config(None, TINY + ["steps=2"])
    trainer = Trainer(config, tmp_path)
    try:
        trainer.fit(stop_at=1)
        state = load(tmp_path / "latest.pt")
        assert state["scaler"] == {}
        trainer.amp, trainer.scaler = True, torch.amp.GradScaler("cpu", enabled=True)
        trainer._load(state)
    finally:
        trainer.run.close()


def interrupt_at(trainer, monkeypatch, step, times=1):
    """SIGINT ``times`` during ``trainer``'s step ``step`` + 1."""
    import os
    import signal

    train_step = trainer.train_step

    def interrupted_step():
        if trainer.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return train_step()
    monkeypatch.setattr(trainer, "train_step", interrupted_step)


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path, monkeypatch, caplog):
    """SIGINT during step 3 of 6: the step ends, latest.pt holds step 3 (eval_every is 2),
    KeyboardInterrupt follows; a second SIGINT stops at once; one in the last step stops
    before the test, which the next resume runs."""
    import signal

    from refmatch.recipes.train import Trainer

    config = load_config(None, TINY + ["steps=6"])
    outside = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest was started in the background
    trainer = Trainer(config, tmp_path)
    try:
        interrupt_at(trainer, monkeypatch, 2, times=2)
        with pytest.raises(KeyboardInterrupt):  # twice: at once, inside the step
            trainer.fit()
        assert load(tmp_path / "latest.pt")["step"] == 2
        monkeypatch.undo()
        interrupt_at(trainer, monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert trainer.step == 3 and load(tmp_path / "latest.pt")["step"] == 3
        assert "stopped at step 3 of 6 (SIGINT)" in caplog.text
    finally:
        trainer.run.close()
    assert signal.getsignal(signal.SIGINT) is outside  # put back
    resumed = Trainer(config, tmp_path, resume=True)
    try:
        interrupt_at(resumed, monkeypatch, 5)
        with pytest.raises(KeyboardInterrupt):
            resumed.fit()
        assert load(tmp_path / "latest.pt")["step"] == 6 and not (tmp_path / "metrics.json").exists()
    finally:
        resumed.run.close()
    finished = Trainer(config, tmp_path, resume=True)
    try:
        assert finished.fit()["config"]["steps"] == 6 and (tmp_path / "metrics.json").exists()
    finally:
        finished.run.close()


def test_a_resume_goes_on_or_keeps_a_finished_result(tmp_path, monkeypatch):
    from refmatch.__main__ import main
    from refmatch.recipes import train

    run = tmp_path / "sup"
    main(["train", *TINY, "method=supervised", "steps=2", "--out", str(run)])
    assert sorted(path.name for path in (run / "images").iterdir()) == ["step_000002.png"]  # supervised too
    with pytest.raises(ValueError, match="steps=1 is below the 2 steps the run has trained"):
        main(["train", "--out", str(run), "--resume", "steps=1"])
    monkeypatch.setattr(train.Trainer, "finish", lambda self: pytest.fail("a finished run was tested again"))
    assert main(["train", "--out", str(run), "--resume"]) == 0


@pytest.mark.parametrize("folder_existed", [False, True])
def test_a_new_run_that_fails_before_training_leaves_the_folder_as_it_was(tmp_path, folder_existed):
    """A pl_k the labelled pixels cannot fill is refused before any step; the failed run's log,
    splits and TensorBoard folder go, and so do the folders it made (a user's files stay)."""
    from refmatch.__main__ import main

    run = tmp_path / "new" / "run"
    if folder_existed:
        run.mkdir(parents=True)
        (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"pl_k=5000 but the labelled images give the bank \d+ pixels"):
        main(["train", *TINY, "steps=2", "pl_mode=soft", "pl_k=5000", "--out", str(run)])
    if folder_existed:
        assert [path.name for path in run.iterdir()] == ["notes.txt"]
    else:
        assert not (tmp_path / "new").exists()
