"""FeatureTap on torchvision-free toy models."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from refmatch import FeatureTap
from tiny_unet import TinyUNet


def test_concatenates_normalised_layers_at_the_largest_size():
    model = TinyUNet()
    with FeatureTap(model, ["decoder.up2", "decoder.up1"]) as tap:
        model(torch.randn(2, 1, 16, 16))
        features = tap.features()
    assert features.shape == (2, 18, 16, 16)
    torch.testing.assert_close(features[:, :12].norm(dim=1), torch.ones(2, 16, 16))
    torch.testing.assert_close(features[:, 12:].norm(dim=1), torch.ones(2, 16, 16))


def test_layers_keep_their_magnitudes_without_normalising():
    """For an l2 or dot bank that should see magnitudes: normalised layers make l2 a function of cosine."""
    model, seen = TinyUNet(), []
    model.decoder.up1.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with FeatureTap(model, ["decoder.up1"], normalize=False, weights=[3.0]) as tap:
        model(torch.randn(2, 1, 16, 16))
        torch.testing.assert_close(tap.features(), 3.0 * seen[-1])
        assert not torch.allclose(tap.features().norm(dim=1), torch.full((2, 16, 16), 3.0))


def test_size_and_weights():
    model = TinyUNet()
    tap = FeatureTap(model, ["decoder.up2", "decoder.up1"], size=4, weights=[2.0, 0.5])
    model(torch.randn(1, 1, 16, 16))
    features = tap.features()
    assert features.shape == (1, 18, 4, 4)
    torch.testing.assert_close(features[:, :12].norm(dim=1), torch.full((1, 4, 4), 2.0))
    tap.close()


@pytest.mark.parametrize("size", [0, (4,), (4, 0), "4", (4.0, 4), True, (2, 3, 4, 5)])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be None, a positive int or an"):
        FeatureTap(TinyUNet(), ["encoder"], size=size)


def test_hooks_are_removed_on_close():
    model = TinyUNet()
    tap = FeatureTap(model, ["encoder"])
    tap.close()
    model(torch.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError, match="this FeatureTap is closed"):
        tap.features()
    assert not model.encoder._forward_hooks


def test_no_output_before_a_forward_pass():
    with pytest.raises(RuntimeError, match="no output captured yet for \\['encoder'\\]"):
        FeatureTap(TinyUNet(), ["encoder"]).features()


def test_an_output_changed_in_place_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
    with FeatureTap(model, ["0"]) as tap, torch.no_grad():
        model(torch.randn(1, 3, 4, 4))
        with pytest.raises(RuntimeError, match="layer '0'.s output was changed in place after the tap took it"):
            tap.features()
    with FeatureTap(model, ["1"]) as tap, torch.inference_mode():  # inference tensors have no version counter
        model(torch.randn(1, 3, 4, 4))
        assert (tap.features() >= 0).all()


def test_under_inference_mode_the_tap_keeps_the_layers_own_output():
    """Without a version counter the in-place ReLU after the tapped conv went unseen: the
    features were the ReLU's, silently."""
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 3, 1))
    images = torch.randn(1, 1, 8, 8)
    with FeatureTap(model, ["0"], normalize=False) as tap, torch.inference_mode():
        model(images)
        features = tap.features()
        assert torch.equal(features, model[0](images)) and (features < 0).any()


def test_layers_from_a_call_outside_the_models_pass_are_not_mixed_with_its_own():
    """model.embed(b) after model(a) re-ran the encoder only: its features joined b's encoder
    to a's decoder. A tap whose layers all ran in one such call is fine."""
    class Embedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, images):
            return self.decoder(self.encoder(images))

        def embed(self, images):
            return self.encoder(images)

    model, images, others = Embedding(), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    with FeatureTap(model, ["encoder", "decoder"]) as tap, FeatureTap(model, ["encoder"], normalize=False) as encoder:
        model(images)
        model.embed(others)
        with pytest.raises(RuntimeError, match=r"\['encoder'\] ran outside the model's forward"):
            tap.features()
        assert torch.equal(encoder.features(), model.encoder(others))
        model(images)
        assert tap.features().shape == (2, 8, 4, 4)
    with FeatureTap(model, ["encoder", ""]) as tap:  # the model itself is tapped within its own pass
        model(images)
        assert tap.features().shape == (2, 8, 4, 4)


def test_a_layer_the_last_pass_skipped_is_refused():
    class AuxiliaryHead(nn.Module):  # deep supervision: the auxiliary head runs in training only
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x, aux):
            features = self.body(x)
            return (features, self.aux(features)) if aux else features

    model = AuxiliaryHead()
    with FeatureTap(model, ["body", "aux"]) as tap:
        model(torch.randn(2, 1, 4, 4), aux=True)
        assert tap.features().shape == (2, 6, 4, 4)
        model(torch.randn(3, 1, 4, 4), aux=False)
        with pytest.raises(RuntimeError, match=r"last forward pass did not run \['aux'\]"):
            tap.features()


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['decoder.up3'\]; valid names: .*decoder.up1"):
        FeatureTap(TinyUNet(), ["decoder.up3"])
    with pytest.raises(ValueError, match="one value per layer"):
        FeatureTap(TinyUNet(), ["encoder"], weights=[1.0, 2.0])
    ema = torch.optim.swa_utils.AveragedModel(TinyUNet())  # wraps as DDP and DataParallel do: module.<name>
    with pytest.raises(ValueError, match=r"\['decoder.up1'\]; a wrapped model \(DistributedDataParallel, "
                                         r"DataParallel, AveragedModel\) names them \['module.decoder.up1'\]"):
        FeatureTap(ema, ["decoder.up1"])
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \[1\]; layer names are strings \(\['1'\]\)"):
        FeatureTap(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)), [1])
    deep = nn.Sequential(*[nn.Identity() for _ in range(50)])
    with pytest.raises(ValueError, match=r"valid names: 0, 1, .*, 39 and 10 more$"):
        FeatureTap(deep, ["x"])
    for layers in ("encoder", [], (name for name in ["encoder"])):  # a generator would be used up checking it
        with pytest.raises(ValueError, match="layers must be a non-empty list of module names"):
            FeatureTap(TinyUNet(), layers)


def test_on_the_recipe_unet():
    from refmatch.recipes.unet import UNet

    model = UNet(1, 2, width=4, depth=3)
    with FeatureTap(model, ["decoder.up2", "decoder.up1"], size=8) as tap:
        model(torch.randn(2, 1, 32, 32))
        features = tap.features()
    assert features.shape == (2, model.decoder_channels("up2") + model.decoder_channels("up1"), 8, 8)


def test_size_takes_numpy_and_tensor_integers():
    assert FeatureTap(TinyUNet(), ["encoder"], size=np.int64(4)).size == (4,)  # every side
    assert FeatureTap(TinyUNet(), ["encoder"], size=(torch.tensor(3), 5)).size == (3, 5)


class TwoHeaded(nn.Module):
    """A decoder stage that returns (auxiliary logits, features), a dict of them, or (logits, a list
    of both)."""

    def __init__(self, as_dict=False, as_list=False):
        super().__init__()
        self.as_dict, self.as_list = as_dict, as_list
        self.aux, self.features = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 5, 1)

    def forward(self, images):
        pair = (self.aux(images), self.features(images))
        if self.as_list:
            return pair[0], list(pair)
        return dict(zip(("aux", "features"), pair)) if self.as_dict else pair


def test_select_takes_an_element_of_a_tuple_or_dict_output():
    """A stage returning (aux_logits, features) was tapped at aux_logits without a word."""
    model, images = nn.Sequential(TwoHeaded()), torch.randn(1, 1, 4, 4)
    with FeatureTap(model, ["0"]) as tap:
        model(images)
        with pytest.warns(UserWarning, match=r"layer '0' returned 2 elements; the tap takes the first: "
                                             r"select=\{'0': i\} takes another \(warned once\)"):
            assert tap.features().shape == (1, 2, 4, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(images)
            tap.features()  # once
    with FeatureTap(model, ["0"], select={"0": 1}) as tap:
        model(images)
        assert tap.features().shape == (1, 5, 4, 4)
    model = nn.Sequential(TwoHeaded(as_dict=True))
    with FeatureTap(model, ["0"]) as tap:
        model(images)
        with pytest.raises(ValueError, match=r"layer '0' gave dict \(keys \['aux', 'features'\]\): "
                                             r"select=\{'0': key\} picks one"):
            tap.features()
    nested = nn.Sequential(TwoHeaded(as_list=True))  # (logits, [hidden states]), as UNETR's vit
    with FeatureTap(nested, ["0"], select={"0": 1}) as tap:
        nested(images)
        with pytest.raises(ValueError, match=r"layer '0' gave list of 2 elements: tap the submodule that returns"):
            tap.features()
    with FeatureTap(model, ["0"], select={"0": "features"}) as tap:
        model(images)
        assert tap.features().shape == (1, 5, 4, 4)
    with FeatureTap(model, ["0"], select={"0": "logits"}):
        with pytest.raises(ValueError, match=r"select=\{'0': 'logits'\}, but layer '0' returned keys \['aux', "):
            model(images)
    with pytest.raises(ValueError, match=r"select names layers that are not tapped: \['1'\]"):
        FeatureTap(model, ["0"], select={"1": 0})
    model = nn.Sequential(nn.Conv2d(1, 2, 1))  # a tensor: select={"0": 0} would take sample 0 of the batch
    with FeatureTap(model, ["0"], select={"0": 0}):
        with pytest.raises(ValueError, match=r"select=\{'0': 0\}, but layer '0' returned shape \(3, 2, 4, 4\)"):
            model(torch.randn(3, 1, 4, 4))
