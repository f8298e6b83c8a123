"""The command line: info and the embedded demo."""
import subprocess
import sys

from refmatch import demo
from refmatch.__main__ import main


def test_info_prints_versions_and_backend_table():
    out = subprocess.run([sys.executable, "-m", "refmatch.info"], capture_output=True, text=True, check=True).stdout
    assert "refmatch 0." in out and "torch" in out and "_C" in out
    for name in ("cuda", "triton", "torch"):
        assert any(line.startswith(name) for line in out.splitlines())


def test_demo_pseudo_labels_beat_class_means():
    figures = demo.run(num_labeled=4, num_unlabeled=4, size=32, dim=32)
    assert figures["accuracy"] > figures["class_mean_accuracy"] + 0.1
    assert figures["accuracy"] > 0.7


def test_unknown_command_shows_usage(capsys):
    assert main(["frobnicate"]) == 2
    assert "demo" in capsys.readouterr().out
