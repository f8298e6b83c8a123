"""Training recipe parts: model, config, losses, checkpoint files and metrics (reports: test_report.py)."""
import json

import numpy as np

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import load, save_atomic  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from refmatch.recipes.losses import dice_loss, rampup  # noqa: E402
from refmatch.recipes.unet import UNet  # noqa: E402


def test_unet_shapes_and_decoder_names():
    model = UNet(1, 3, width=4, depth=3)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    assert model.decoder_channels("decoder.up2") == 8 and model.decoder_channels("up1") == 4
    assert "decoder.up1" in dict(model.named_modules())


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: supervised\nsteps: 5\n")
    config = load_config(path, ["lr=0.01", "tap_layers=[decoder.up1]"])
    assert (config.method, config.steps, config.lr, config.tap_layers) == ("supervised", 5, 0.01, ["decoder.up1"])
    # YAML 1.1 reads exponents without a dot as text: taken as floats, in a file and as overrides.
    path.write_text("lr: 1e-3\n")
    assert (load_config(path).lr, load_config(None, ["weight_decay=2E-4"]).weight_decay) == (0.001, 0.0002)
    path.write_text("method: supervised\nsteps: 5\n")
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="method must be one of"):
        load_config(None, ["method=fixmatch"])
    with pytest.raises(ValueError, match="steps must be int"):
        load_config(None, ["steps=many"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):
        load_config(None, ["width=0"])
    with pytest.raises(ValueError, match="pl_mode must be one of"):
        load_config(None, ["pl_mode=bogus"])
    with pytest.raises(ValueError, match="pl_mode=hard takes the nearest reference"):
        load_config(None, ["pl_mode=hard", "pl_k=8"])
    with pytest.raises(ValueError, match=r"pl_threshold must be <= 1 \(a higher one keeps no pseudo-label\), got 1.5"):
        load_config(None, ["pl_threshold=1.5"])


def test_a_config_extends_another_and_keeps_only_its_changes(tmp_path):
    """``extends`` (relative to the file) takes the other file's values first, over a chain;
    a missing file names who extended it, a loop and a value that names no file are refused."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text("method: supervised\nsteps: 5\nlr: 0.01\n")
    (tmp_path / "base" / "middle.yaml").write_text("extends: root.yaml\nsteps: 7\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base/middle.yaml\nlr: 0.02\n")
    config = load_config(child, ["width=4"])
    assert (config.method, config.steps, config.lr, config.width) == ("supervised", 7, 0.02, 4)
    child.write_text("extends: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"config not found: .*gone.yaml \(extended by .*child.yaml\)"):
        load_config(child)
    (tmp_path / "base" / "root.yaml").write_text("extends: ../child.yaml\n")
    child.write_text("extends: base/middle.yaml\n")
    with pytest.raises(ValueError, match=r"loop: .*child.yaml -> .*middle.yaml -> .*root.yaml -> .*child.yaml"):
        load_config(child)
    child.write_text("extends: [a.yaml, b.yaml]\n")
    with pytest.raises(ValueError, match="extends must name one config file"):
        load_config(child)
    with pytest.raises(ValueError, match="unknown config key.*extends"):  # a file key, not an override
        load_config(None, ["extends=child.yaml"])


def test_the_repositorys_configs_are_found_outside_it(tmp_path, monkeypatch):
    """An installed package ships configs/: the README's main job runs from any folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"phantom_quick.yaml is not here: reading the package's copy, "):
        assert load_config("configs/phantom_quick.yaml").steps == load_config("phantom_quick.yaml").steps == 600
    with pytest.warns(UserWarning, match="lung_sides_cpu.yaml is not here"):
        assert load_config("configs/lung_sides_cpu.yaml").image_size == 128  # extends lung_cpu.yaml, beside it
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "phantom_quick.yaml").write_text("steps: 5\n")
    assert load_config("configs/phantom_quick.yaml").steps == 5  # a file of the given path comes first
    with pytest.raises(FileNotFoundError, match=r"config not found: configs/nope.yaml \(the package's own: lung_cpu"):
        load_config("configs/nope.yaml")


def test_losses():
    masks = torch.randint(0, 3, (2, 8, 8))
    perfect = 50.0 * torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(perfect, masks).item() < 1e-3
    assert rampup(0, 10) == pytest.approx(0.0067, abs=1e-3) and rampup(10, 10) == 1.0 and rampup(5, 0) == 1.0


def test_atomic_save_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_atomic({"step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2}, path)
    assert load(path, required=("step",))["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


@pytest.mark.parametrize("state, message", [
    ({"a": 1}, "lacks config, teacher"), ({"config": {}}, "lacks teacher"),
    (UNet(1, 2, 4, 2).state_dict(), "lacks config, teacher .a plain model state_dict"),
])
def test_a_file_that_is_no_refmatch_checkpoint_is_named(tmp_path, state, message):
    path = tmp_path / "best.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{path} is not a refmatch checkpoint: it {message}"):
        load(path)


def test_a_teacher_that_does_not_fit_its_config_is_named(tmp_path):
    from refmatch.recipes.checkpoint import saved_teacher

    state = {"config": {"width": 8, "depth": 2}, "teacher": UNet(1, 2, 4, 2).state_dict()}
    with pytest.raises(ValueError, match="best.pt: its teacher does not fit its own config .width 8, depth 2"):
        saved_teacher(state, tmp_path / "best.pt", "cpu")
    # compared before a model is built: this one would ask for 1.4 TB
    state["config"] = {"width": 200000, "depth": 2}
    with pytest.raises(ValueError, match=r"width 200000, depth 2, norm batch, 2 classes\): decoder.*is \(4, 8, "):
        saved_teacher(state, tmp_path / "best.pt", "cpu")
    state["config"], state["teacher"]["head.weight"] = {"width": 4, "depth": 2}, torch.zeros(1, 4, 1, 1).expand(
        10 ** 8, 4, 1, 1)  # a few bytes on disk, 1.6 GB as a model
    with pytest.raises(ValueError, match=r"its teacher predicts 100000000 classes, more than masks name \(255\)"):
        saved_teacher(state, tmp_path / "best.pt", "cpu")


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Written through a temporary file, yet readable as any file the user writes (not 0600)."""
    import os

    from refmatch.data.splits import save_splits

    save_atomic({"step": 1}, tmp_path / "latest.pt")
    save_splits({"labeled": ["a.png"], "unlabeled": [], "val": [], "test": [], "seed": 0}, tmp_path / "splits.json")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("latest.pt", "splits.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_metrics_json_writes_infinite_hd95_as_null():
    import math

    from refmatch.recipes.evaluation import metrics_json

    text = metrics_json({"mean_hd95": math.inf, "per_class": {"lung": {"dice": 0.5, "hd95": math.nan}}})
    assert json.loads(text) == {"mean_hd95": None, "per_class": {"lung": {"dice": 0.5, "hd95": None}}}


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from refmatch.recipes import ranks

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA device: train with device=cpu"):
        ranks.pick_device("cuda", local_rank=0, local_world=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ranks.pick_device("cuda", local_rank=0, local_world=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="2 processes on this node but 1 CUDA device"):
        ranks.pick_device("cuda", local_rank=1, local_world=2)


def test_resume_check_reads_keys_missing_from_an_older_save_as_defaults():
    import dataclasses

    from refmatch.recipes.checkpoint import check_resumable

    saved = dataclasses.asdict(load_config(None, ["steps=10"]))
    del saved["pl_consensus"]  # a run saved before the key existed
    check_resumable(saved, load_config(None, ["steps=20"]))
    # What the README says a resume may change (and the steps trained), all at once:
    check_resumable(saved, load_config(None, ["steps=20", "eval_every=7", "image_every=3", "num_workers=0",
                                              "device=cpu"]))
    with pytest.raises(ValueError, match=r"pl_consensus \(False saved, True given\)"):
        check_resumable(saved, load_config(None, ["steps=10", "pl_consensus=true"]))
    # A key whose default changed since: such runs resume as they ran (the ring bank).
    del saved["bank_policy"]
    assert load_config(None, ["steps=20"], base=saved).bank_policy == "ring"
    check_resumable(saved, load_config(None, ["steps=20"], base=saved))
    with pytest.raises(ValueError, match=r"bank_policy \('ring' saved, 'reservoir' given\)"):
        check_resumable(saved, load_config(None, ["steps=20"]))


def test_resume_check_leaves_out_settings_the_method_never_reads():
    """A supervised run saved with another tap_size resumes under today's config; a refmatch run
    does not. An older save's None (pl_threshold, num_labeled) reads as the default."""
    import dataclasses

    from refmatch.recipes.checkpoint import check_resumable

    for method, refused in (("supervised", False), ("meanteacher-pl", False), ("refmatch", True)):
        saved = dataclasses.asdict(load_config(None, [f"method={method}", "tap_size=16"]))
        given = load_config(None, [f"method={method}", "tap_size=32"], base=saved)
        if refused:
            with pytest.raises(ValueError, match=r"tap_size \(16 saved, 32 given\)"):
                check_resumable(saved, given)
        else:
            check_resumable(saved, given)
    saved = {**dataclasses.asdict(load_config(None, [])), "pl_threshold": None, "num_labeled": None}
    check_resumable(saved, load_config(None, [], base=saved))


class SquareModel(torch.nn.Module):
    """Logits [b, 2, h, w] predicting class 1 on the square [h/4, h/2) x [w/4, w/2), whatever the image."""

    def forward(self, images):
        square = torch.zeros_like(images)
        h, w = images.shape[-2:]
        square[..., h // 4:h // 2, w // 4:w // 2] = 1
        return torch.cat([0.5 - square, square - 0.5], dim=1) * 10


def test_evaluate_at_file_size_scores_each_mask_where_it_was_stored(tmp_path):
    """The model sees 16 x 16 images; its probabilities are resized back to each 32 x 32 or
    48 x 48 mask, where its square lands exactly on the mask's, or one pixel beside it."""
    from PIL import Image

    from refmatch.data.folder import FolderDataset
    from refmatch.recipes.evaluation import evaluate, evaluate_at_file_size
    from refmatch.recipes.data_setup import load_split

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for name, size, shift in (("a.png", 32, 0), ("b.png", 48, 1)):
        image = np.zeros((size, size), dtype=np.uint8)
        image[size // 4:size // 2, size // 4:size // 2] = 255
        Image.fromarray(image).save(tmp_path / "images" / name)
        Image.fromarray(np.roll(image, shift, axis=1)).save(tmp_path / "masks" / name)
    native = FolderDataset(tmp_path, ["a.png", "b.png"], size=16, resize_masks=False)
    assert [tuple(native[i]["mask"].shape) for i in range(2)] == [(32, 32), (48, 48)]
    scores = evaluate_at_file_size(SquareModel(), native, ("background", "lung"), "cpu")
    assert scores["hd95"]["lung"] == pytest.approx((0.0 + 1.0) / 2)
    # at 3x, bilinear rounds off the square's four corner pixels: 140 of 144, 130 on the shifted mask
    assert scores["dice"]["lung"] == pytest.approx(2 * (64 + 130) / (64 + 64 + 140 + 144))
    resized = FolderDataset(tmp_path, ["a.png"], size=16)
    at_training_size = evaluate(SquareModel(), load_split(resized, 0, 16), ("background", "lung"), "cpu")
    assert at_training_size["dice"]["lung"] == 1.0


@pytest.mark.parametrize("policy, images_kept", [("reservoir", 6), ("ring", 2)])
def test_the_bank_keeps_pixels_of_every_labelled_image(policy, images_kept):
    """Each refresh adds the labelled images in one order; a full class must not keep only the
    last ones (the ring policy does: 6 images of 16 x 16 one-class pixels, 512 slots)."""
    from refmatch.recipes.methods import ReferencePseudoLabels

    config = load_config(None, ["width=4", "image_size=16", "tap_size=16", "bank_capacity=512",
                                f"bank_policy={policy}"])
    teacher = UNet(1, 2, config.width, config.depth).eval()
    source = ReferencePseudoLabels(teacher, config, 2, "cpu")
    images = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    source.refresh(images, torch.zeros(6, 16, 16, dtype=torch.long), batch_size=1)  # rows as found below
    stored = source.bank.features[:int(source.bank.counts[0])]
    kept = 0
    for image in images:
        teacher(image[None])
        rows = torch.nn.functional.normalize(source.tap.features().float().flatten(2)[0].T, dim=1)
        kept += bool((rows[:, None, :] == stored[None]).all(dim=2).any())  # some row stored as it is
    assert kept == images_kept


def test_pl_k_beyond_the_labelled_pixels_is_refused_before_pseudo_labels_start():
    """The check counts what ``add`` stores: each class's pixels at tap resolution (ignored ones
    dropped), at most bank_capacity each; the refresh checks the bank it built the same way."""
    from refmatch.recipes.methods import IGNORE, ReferencePseudoLabels, check_pl_k

    masks = torch.zeros(3, 16, 16, dtype=torch.long)
    masks[:, :, 8:] = 1
    masks[2] = IGNORE  # 2 images x 4 x 4 tap pixels: 16 of class 0 (capacity 12), 16 of class 1
    config = load_config(None, ["width=4", "image_size=16", "tap_size=4", "bank_capacity=12",
                                "pl_mode=soft", "pl_k=25"])
    source = ReferencePseudoLabels(UNet(1, 2, config.width, config.depth).eval(), config, 2, "cpu")
    with pytest.raises(ValueError, match=r"pl_k=25 but the labelled images give the bank 24 pixels \(tap_size=4"):
        check_pl_k(config, masks, 2)
    with pytest.raises(ValueError, match=r"pl_k=25 but the labelled images give the bank 24 pixels"):
        source.refresh(torch.rand(3, 1, 16, 16), masks, batch_size=2)
    config.pl_k = source.labeler.k = 24
    check_pl_k(config, masks, 2)
    source.refresh(torch.rand(3, 1, 16, 16), masks, batch_size=2)
    assert len(source.bank) == 24
    with pytest.raises(ValueError, match=r"give the bank no pixel at tap_size=4: .* check masks/, or raise"):
        check_pl_k(config, masks[2:], 2)  # no advice to lower a pl_k of 1


def test_weak_augmentation_labels_padding_as_asked():
    """Pixels moved in from outside are background in training masks but unknown in hidden
    truth, which scores pseudo-labels (mask-less images had 10 % made-up background)."""
    from refmatch.recipes import augment

    images, masks = torch.rand(8, 1, 32, 32), torch.full((8, 32, 32), -1, dtype=torch.long)
    masks[:, 8:24, 8:24] = 2
    moved = {outside: augment.weak(images, masks, torch.Generator().manual_seed(0), shift=0.2, outside=outside)[1]
             for outside in (0, -1)}
    assert moved[0].unique().tolist() == [-1, 0, 2] and moved[-1].unique().tolist() == [-1, 2]
    assert torch.equal(moved[-1], torch.where(moved[0] == 0, -1, moved[0]))
