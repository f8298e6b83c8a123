"""FeatureTap around torch's wrappers and copies: deepcopy (an EMA teacher), DataParallel,
AveragedModel, torch.compile, activation checkpointing."""
import copy
import warnings

import pytest
import torch

from refmatch import FeatureTap
from tiny_unet import TinyUNet


def test_a_deepcopy_of_the_model_leaves_the_tap_alone_and_says_so():
    """The copy's hooks capture nothing: features() gives the tapped model's pass, with a warning
    where the copy ran after it (a researcher took those for the teacher's features)."""
    model = TinyUNet()
    with FeatureTap(model, ["encoder"]) as tap:
        model(torch.randn(2, 1, 8, 8))
        teacher = copy.deepcopy(model)  # an EMA teacher made from the tapped student
        teacher(torch.randn(5, 1, 8, 8))
        with pytest.warns(UserWarning, match=r"a copy of the tapped model \(copy.deepcopy: an EMA teacher\?\) ran"):
            assert tap.features().shape[0] == 2
        model(torch.randn(3, 1, 8, 8))  # the tapped model's own pass, last: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tap.features().shape[0] == 3
    with FeatureTap(model, ["encoder"]) as tap:  # only the copy ran: it said "run a forward pass first"
        copy.deepcopy(model)(torch.randn(5, 1, 8, 8))
        with pytest.raises(RuntimeError, match=r"only a copy of the tapped model \(copy.deepcopy"):
            tap.features()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_a_checkpointed_models_recompute_leaves_the_captures(use_reentrant):
    """backward recomputes a checkpointed model's forward, and may stop part way: that is no new pass."""
    from torch.utils.checkpoint import checkpoint

    model = TinyUNet()
    with FeatureTap(model, ["encoder", "decoder.up1"]) as tap:
        images = torch.randn(2, 1, 8, 8, requires_grad=True)
        checkpoint(model, images, use_reentrant=use_reentrant).sum().backward()
        assert tap.features().shape == (2, 22, 8, 8) and tap._passes == 1


def test_data_parallel_replicas_are_refused_by_name():
    model = TinyUNet()
    with FeatureTap(model, ["encoder"]) as tap:
        model.encoder._replicate_for_data_parallel()(torch.randn(1, 1, 8, 8))  # what a replica runs
        with pytest.raises(RuntimeError, match="ran as nn.DataParallel replicas"):
            tap.features()


def test_a_compiled_model_points_to_the_module_it_compiled():
    model = TinyUNet()
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['encoder'\]; a torch.compile'd model: tap the "
                                         r"module it compiled \(model._orig_mod\); valid names: _orig_mod, "):
        FeatureTap(torch.compile(model), ["encoder"])
    FeatureTap(torch.compile(model)._orig_mod, ["encoder"]).close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, from compiling
def test_a_tap_made_after_a_compiled_call_says_why_it_saw_nothing():
    """Dynamo does not guard on module hooks: code compiled before the tap runs without them,
    which read as "a layer used only in some passes"."""
    model = torch.compile(TinyUNet(), backend="eager")
    images = torch.randn(1, 1, 8, 8)
    try:
        with torch.no_grad():
            model(images)  # warm-up steps before pseudo-labels start, say
            tap = FeatureTap(model, ["_orig_mod.encoder"])
            model(images)
            with pytest.raises(RuntimeError, match=r"or the model was torch.compile'd and ran before this tap was "
                                                   r"made, .*torch._dynamo.reset\(\) after making it"):
                tap.features()
            torch._dynamo.reset()
            model(images)
            assert tap.features().shape == (1, 16, 4, 4)
    finally:
        torch._dynamo.reset()
