"""The U-Net's normalisation (config key ``norm``): instance norm by default, BatchNorm for runs
saved before the key and for the configs whose published tables ran with it."""
import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import saved_teacher  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from refmatch.recipes.unet import UNet  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_instance_norm_treats_each_image_alone_in_training_and_evaluation():
    """What BatchNorm lacks: an image's output depends neither on the rest of its batch (a
    strongly augmented half) nor on the mode, so student, teacher and evaluation agree."""
    torch.manual_seed(0)
    images = torch.rand(4, 1, 32, 32)
    images[2:] = images[2:] ** 2.5  # a batch half as skewed as strong augmentation makes it
    instance = UNet(1, 3, width=4, depth=3, norm="instance")
    assert not list(instance.buffers())
    with torch.no_grad():
        together = instance.train()(images)
        assert torch.allclose(instance(images[:2]), together[:2], atol=1e-5)
        assert torch.allclose(instance.eval()(images), together, atol=1e-5)
        batch = UNet(1, 3, width=4, depth=3, norm="batch").train()
        assert not torch.allclose(batch(images[:2]), batch(images)[:2], atol=1e-3)  # the test can tell


def test_norm_is_checked_and_defaults_to_instance():
    assert load_config(None).norm == "instance" and load_config(None, ["norm=batch"]).norm == "batch"
    with pytest.raises(ValueError, match="norm must be one of 'batch', 'instance', got 'group'"):
        load_config(None, ["norm=group"])
    with pytest.raises(ValueError, match="norm must be one of 'batch', 'instance', got 'layer'"):
        UNet(norm="layer")
    for config in sorted(CONFIGS.glob("*.yaml")):  # every shipped config takes the default
        assert load_config(config).norm == "instance", config.name


def test_a_run_saved_before_the_key_loads_with_batchnorm(tmp_path):
    saved = dataclasses.asdict(load_config(None, ["width=4", "depth=3"]))
    del saved["norm"]
    state = {"config": saved, "teacher": UNet(1, 3, width=4, depth=3, norm="batch").state_dict()}
    teacher, config = saved_teacher(state, tmp_path / "best.pt", "cpu")
    assert config.norm == "batch" and isinstance(teacher.encoder[0][1], torch.nn.BatchNorm2d)
    assert load_config(None, ["steps=20"], base=saved).norm == "batch"  # a resume keeps it


def test_weights_of_the_other_norm_are_named(tmp_path):
    saved = dataclasses.asdict(load_config(None, ["width=4", "depth=3", "norm=instance"]))
    state = {"config": saved, "teacher": UNet(1, 3, width=4, depth=3, norm="batch").state_dict()}
    with pytest.raises(ValueError, match="best.pt: its teacher does not fit its own config .width 4, depth 3, "
                                         "norm instance, 3 classes"):
        saved_teacher(state, tmp_path / "best.pt", "cpu")
