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
