"""A bank's calls inside the caller's autocast (mixed-precision training) give what they give outside it;
a tapped model compiles whole under it, and a compiled block's recompute leaves the captures."""
import pytest
import torch

import refmatch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def half_filled_bank(device, metric):
    """A bfloat16 bank (the default dtype) whose middle class is not full: its stored rows are
    copied together before the match, where float16 autocast made torch.cat raise inside torch."""
    torch.manual_seed(0)
    bank = refmatch.ReferenceBank(dim=8, num_classes=3, capacity_per_class=20, metric=metric).to(device)
    masks = torch.tensor([0, 0, 1, 2] * 4).reshape(1, 4, 4).to(device)
    bank.add(torch.randn(1, 8, 4, 4, device=device), masks)
    bank.add(torch.randn(1, 8, 4, 4, device=device), torch.zeros_like(masks))  # class 0 full, 1 not
    return bank


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16])
def test_match_classwise_and_labels_ignore_the_callers_autocast(device, metric, autocast_dtype):
    bank = half_filled_bank(device, metric)
    assert bank.counts.tolist() == [20, 4, 4]
    query = torch.randn(2, 8, 4, 4, device=device)
    labeler = refmatch.PseudoLabeler(bank, mode="hard", out_size=(8, 8))
    expected = (bank.match(query, k=3), bank.classwise_max(query), labeler(query))
    with torch.no_grad(), torch.autocast(device, dtype=autocast_dtype):
        found = (bank.match(query, k=3), bank.classwise_max(query), labeler(query))
    for before, after in zip(expected[0] + (expected[1],) + expected[2], found[0] + (found[1],) + found[2]):
        assert torch.equal(before, after)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, from compiling
def test_a_tapped_model_compiles_whole_under_autocast():
    """The tap's hooks queried autograd's graph task, inference mode and version counters, which
    torch.compile cannot trace: fullgraph refused the model, and Inductor failed on the pieces
    under bfloat16 autocast. The tap takes the compiled pass's features as eagerly."""
    from refmatch.recipes.unet import UNet

    torch.manual_seed(0)
    model = UNet(width=4, depth=3, norm="instance").eval()
    tap = refmatch.FeatureTap(model, ["decoder.up2", "decoder.up1"])
    images = torch.randn(2, 1, 32, 32)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(images)
            eager = tap.features()
            torch.compile(model, fullgraph=True, backend="eager")(images)
            assert torch.equal(tap.features(), eager)
    finally:
        torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("reentrant", [True, False])
def test_a_compiled_block_recomputed_by_checkpointing_leaves_the_captures(reentrant):
    """Compiled code cannot ask whether backward runs it: the recompute of a checkpointed compiled
    block overwrote the forward pass's capture, and features() refused it as taken outside."""
    from torch.utils.checkpoint import checkpoint

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = torch.nn.Conv2d(1, 2, 1), torch.nn.Conv2d(4, 2, 1)
            self.block = torch.compile(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1)), backend="eager")

        def forward(self, images):
            return self.head(checkpoint(self.block, self.stem(images), use_reentrant=reentrant))

    torch.manual_seed(0)
    model = Model()
    tap = refmatch.FeatureTap(model, ["stem", "block._orig_mod.0"])
    try:
        model(torch.randn(2, 1, 8, 8)).sum().backward()
        before = tap.features()
        model(torch.randn(2, 1, 8, 8)).sum().backward()  # the next pass's, not its recompute's
        assert tap.features().shape == before.shape and not torch.equal(tap.features(), before)
    finally:
        torch._dynamo.reset()
