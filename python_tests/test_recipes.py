"""Training recipe runs: a few steps of each method, resume, pseudo-label consensus, CLI
(the parts: test_recipe_parts.py; run folders on failures and Ctrl-C: test_run_folders.py;
DDP: test_ddp_training.py)."""
import importlib.util
import json

import pytest
import torch

import refmatch

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
    assert metrics["resolution"] == "training (32x32)" and metrics["model"] == "EMA teacher"
    assert result["best_step"] in (2, 4)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "latest.pt").exists()
    assert (tmp_path / "splits.json").exists() and (tmp_path / "train.log").exists()
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == ["step_000002.png", "step_000004.png"]
    if importlib.util.find_spec("tensorboard"):  # the same grids in TensorBoard, by step
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "tensorboard"))
        events.Reload()
        assert [image.step for image in events.Images("images")] == [2, 4]
        tags = set(events.Tags()["scalars"])
        assert {"loss/supervised", "loss/total", "val/mean_dice"} <= tags
        pseudo = {"loss/pseudo_label", "pseudo/weight", "pseudo/kept_ratio", "pseudo/accuracy", "pseudo/recall/lung"}
        assert pseudo <= tags if method != "supervised" else not pseudo & tags


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
    (environment,) = metrics["environments"]  # resumed where it trained: one environment, from step 0
    assert environment["from_step"] == 0 and environment["threads"] == torch.get_num_threads()
    assert environment["refmatch"] == refmatch.__version__ and environment["device"].startswith("cpu (")


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
    """train, then evaluate on a folder (refmatch pseudo-label: test_pseudo_label_command.py)."""
    from PIL import Image

    from refmatch.__main__ import main
    from refmatch.data.phantoms import make_phantom

    run = tmp_path / "run"
    main(["train", *TINY, "--out", str(run), "method=refmatch", "steps=2"])  # overrides on both sides
    assert "test_mean_dice" in capsys.readouterr().out
    labeled = tmp_path / "labeled"
    for folder in (labeled / "images", labeled / "masks"):
        folder.mkdir(parents=True)
    for i in range(3):
        image, mask = make_phantom(i, size=32)
        Image.fromarray((255 * image[0]).byte().numpy()).save(labeled / "images" / f"p{i}.png")
        Image.fromarray(mask.byte().numpy()).save(labeled / "masks" / f"p{i}.png")
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
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "m.json")])  # its own data
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated["mean_dice"] == pytest.approx(trained["mean_dice"], abs=1e-6)
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "m.json")])  # its own output
    with pytest.raises(FileExistsError, match="is not an earlier output of evaluate"):  # the run's result
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(run / "metrics.json")])
    (tmp_path / "empty.json").touch()  # mktemp's
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "empty.json")])
    from PIL import Image

    for sub in ("images", "masks"):  # a folder of one image: not the run's phantoms
        (tmp_path / "other" / sub).mkdir(parents=True)
        Image.new("L", (32, 32)).save(tmp_path / "other" / sub / "one.png")
    with pytest.raises(ValueError, match="phantoms are generated at the run's image_size"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "phantom", "--resolution", "native"])
    with pytest.raises(ValueError, match="the run trained on phantom"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tmp_path / "other")])
    binary = tmp_path / "binary"  # 0/255 masks: for a 4-class model, background and ignored pixels
    for sub in ("images", "masks"):
        (binary / sub).mkdir(parents=True)
    Image.new("L", (32, 32)).save(binary / "images" / "one.png")
    mask = Image.new("L", (32, 32))
    mask.paste(255, (8, 8, 24, 24))
    mask.save(binary / "masks" / "one.png")
    with pytest.raises(ValueError, match="holds only 0 and 255: a binary folder, but the model has 4 classes"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(binary), "--split", "all"])
    splits = json.loads((run / "splits.json").read_text())
    splits["counts"]["test"] = 0
    (run / "splits.json").write_text(json.dumps({**splits, "test": []}))  # test_fraction=0: it printed all null
    with pytest.raises(ValueError, match="the run's test split holds no image: --split val or --split all"):
        main(["evaluate", "--checkpoint", str(run / "best.pt")])
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
        assert trainer.scaler.is_enabled() and trainer.scaler.state_dict()["scale"] == 2.0 ** 16  # afresh
        trainer._load({**state, "scaler": torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict()})
        assert trainer.scaler.state_dict()["scale"] == 1024.0  # an AMP leg's scale goes on
    finally:
        trainer.run.close()


def test_a_run_without_test_images_says_so_and_saves_null_test_figures(tmp_path, caplog):
    from refmatch.__main__ import main

    with caplog.at_level("INFO", logger="refmatch"):
        main(["train", *TINY, "method=supervised", "steps=2", "test_fraction=0", "--out", str(tmp_path)])
    assert "no test images (test_fraction=0, min_test=0): no test metrics" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["mean_dice"] is None
