"""The README's Usage example runs as written (its training-loop block is a sketch with the
user's own model and data, so it is not run)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_usage_example_runs_and_its_shapes_hold():
    usage = next(block for block in python_blocks() if block.startswith("import torch\nimport refmatch\n"))
    scope = {}
    exec(compile(usage, str(README), "exec"), scope)
    assert scope["pseudo_labels"].shape == (8, 32, 32) and scope["similarity"].shape == (8, 32, 32)
    assert scope["top5"].index.shape == (8, 5, 32, 32)
    assert scope["per_class"].shape == (8, 4, 32, 32) and scope["soft"].probabilities.shape == (8, 4, 32, 32)


def test_volumes_go_in_flattened_as_the_contract_says():
    """[B, D, Z, H, W] volumes as [B, D, Z*H, W] maps (a view), results unflattened back: the same
    matches as each slice on its own, for contiguous and channels-last-3d volumes."""
    import torch

    import refmatch

    reference, labels = torch.randn(60, 16), torch.randint(0, 3, (60,))
    for volume in (torch.randn(2, 16, 3, 5, 7), torch.randn(2, 16, 3, 5, 7).to(memory_format=torch.channels_last_3d)):
        maps = volume.flatten(2, 3)
        assert maps._base is volume, "a view, not a copy"
        labelled = refmatch.match(maps, reference, labels, k=4).label.unflatten(-2, (3, 5))
        for z in range(3):
            assert torch.equal(labelled[:, :, z], refmatch.match(volume[:, :, z], reference, labels, k=4).label)
