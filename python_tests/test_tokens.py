"""Transformer tokens as maps: tokens_as_maps and FeatureTap's to_maps (a ViT user's path)."""
import pytest
import torch
from torch import nn

import refmatch
from refmatch import FeatureTap, ReferenceBank, tokens_as_maps


class TinyViT(nn.Module):
    """Patch embedding, a class token and one block: the [B, 1 + h*w, D] layout of DINO-style ViTs."""

    def __init__(self, dim=8, patch=4):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.block = nn.Linear(dim, dim)

    def forward(self, images):
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, h*w, D]
        return self.block(torch.cat([self.cls_token.expand(len(images), -1, -1), patches], dim=1))


def test_tokens_become_maps_in_raster_order():
    patches = torch.randn(2, 3, 5, 6)  # [B, D, h, w]
    tokens = torch.cat([torch.randn(2, 3, 1), patches.flatten(2)], dim=2).transpose(1, 2)  # [B, 1 + 30, D]
    maps = tokens_as_maps(tokens, grid=(5, 6))
    assert torch.equal(maps, patches) and maps._base is not None  # a view
    registers = torch.cat([torch.randn(2, 5, 3), patches[..., :5].flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(tokens_as_maps(registers, 5), patches[..., :5])  # 5 register tokens, then a 5 x 5 grid


def test_bad_tokens_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"a 5x5 patch grid needs 25 tokens, got 24: pass grid="):
        tokens_as_maps(torch.randn(1, 24, 3), grid=5)
    with pytest.raises(ValueError, match=r"tokens must be \[B, T, D\], .*maps need no reshaping"):
        tokens_as_maps(torch.randn(1, 3, 4, 4), grid=4)
    with pytest.raises(ValueError, match=r"grid must be a positive int or an \(h, w\) pair of them, got \(0, 2\)"):
        tokens_as_maps(torch.randn(1, 5, 3), grid=(0, 2))
    with pytest.raises(ValueError, match=r"a 16x15 patch grid leaves 17 of 257 tokens before the patches, more "
                                         r"than a class token and registers \(at most 16\)"):
        tokens_as_maps(torch.randn(1, 257, 3), grid=(16, 15))  # a ViT-S/14's 1 + 16 x 16 tokens
    with pytest.raises(ValueError, match=r"grid=\(h, w\) is needed"):  # 1 + 16 x 16 and 1 + 15 x 17 tokens alike
        tokens_as_maps(torch.randn(1, 257, 3))


def test_feature_tap_maps_a_vits_tokens_where_labels_line_up():
    """Each patch's feature says which quarter of the image it lies in, so the bank's labels
    (masks at image resolution, majority over 4x4 patches) must be those quarters exactly."""
    vit = TinyViT()
    with torch.no_grad():
        vit.block.weight.copy_(torch.eye(8)), vit.block.bias.zero_()
        vit.patch_embed.weight.zero_(), vit.patch_embed.bias.zero_()
    images = torch.zeros(1, 1, 16, 16)
    masks = torch.zeros(1, 16, 16, dtype=torch.long)
    masks[:, 8:, :] += 1
    masks[:, :, 8:] += 2  # quarters: 0 2 on top, 1 3 below
    with pytest.raises(ValueError, match=r"transformer tokens \[B, T, D\]\?\): to_maps=\{'block': lambda x: "
                                         r"refmatch.tokens_as_maps\(x, grid=\(h, w\)\)\}"):
        with FeatureTap(vit, ["block"]) as tap:
            vit(images)
            tap.features()
    with pytest.raises(ValueError, match="layer 'block' gave .* from its to_maps function; FeatureTap needs"):
        with FeatureTap(vit, ["block"], to_maps={"block": lambda tokens: tokens[:, 1:]}) as tap:
            vit(images)
            tap.features()
    with FeatureTap(vit, ["block"], normalize=False, to_maps={"block": lambda x: tokens_as_maps(x, 4)}) as tap:
        embedded = torch.zeros(1, 8, 4, 4)
        embedded[0, masks[0, ::4, ::4].flatten(), torch.arange(16) // 4, torch.arange(16) % 4] = 1.0  # one-hot quarter
        vit.patch_embed.register_forward_hook(lambda module, inputs, output: embedded)
        vit(images)
        features = tap.features()
    assert features.shape == (1, 8, 4, 4) and torch.equal(features, embedded)
    bank = ReferenceBank(8, 4, capacity_per_class=4, dtype=torch.float32, metric="dot")
    bank.add(features, masks)
    assert bank.class_counts().tolist() == [4, 4, 4, 4]
    assert torch.equal(bank.features.argmax(dim=1), bank.labels)  # every row under its own quarter's label
    assert torch.equal(refmatch.PseudoLabeler(bank, out_size=16)(features).labels, masks)


def test_to_maps_is_checked_and_shown():
    vit = TinyViT()
    with pytest.raises(ValueError, match=r"to_maps names layers that are not tapped: \['head'\]"):
        FeatureTap(vit, ["block"], to_maps={"head": lambda x: tokens_as_maps(x, 4)})
    with pytest.raises(TypeError, match="to_maps takes a function per layer"):
        FeatureTap(vit, ["block"], to_maps={"block": "tokens"})
    swin_stage = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), Permuted())  # [B, h, w, D] out, as Swin's stages
    tap = FeatureTap(swin_stage, ["1"], to_maps={"1": lambda x: x.permute(0, 3, 1, 2)})
    assert "to_maps={'1': ...}" in repr(tap)
    swin_stage(torch.randn(2, 1, 5, 7))
    assert tap.features().shape == (2, 6, 5, 7)


class Permuted(nn.Module):
    def forward(self, maps):
        return maps.permute(0, 2, 3, 1)
