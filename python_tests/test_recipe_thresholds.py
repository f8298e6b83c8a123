"""The training recipe's ``pl_threshold``: one number, or one per class (the library's side:
test_pseudo_label_thresholds.py)."""
import math

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")

from refmatch.recipes.config import load_config  # noqa: E402
from refmatch.recipes.methods import ReferencePseudoLabels, labeler_threshold  # noqa: E402
from refmatch.recipes.unet import UNet  # noqa: E402


def test_a_list_gives_one_threshold_per_class_in_a_file_and_as_an_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pl_threshold: [0.5, 1e-3, 0, -1]\n")  # YAML 1.1 reads 1e-3 as text
    assert load_config(path).pl_threshold == [0.5, 0.001, 0.0, -1.0]
    assert load_config(None, ["pl_threshold=[0.2, 0.3, 0.4, 0.5]"]).pl_threshold == [0.2, 0.3, 0.4, 0.5]
    assert load_config(None, ["pl_threshold=0.25"]).pl_threshold == 0.25


def test_the_count_must_match_the_runs_classes():
    """Phantoms have four classes; a folder has its ``classes``, or background and lung."""
    with pytest.raises(ValueError, match=r"one per class \(4: background, lung, heart, clavicle\), got 2 values"):
        load_config(None, ["pl_threshold=[0.5, 0.5]"])
    folder = ["data=some/folder", "classes=[background, liver, tumour]"]
    assert load_config(None, [*folder, "pl_threshold=[0, 0.3, 0.6]"]).pl_threshold == [0.0, 0.3, 0.6]
    with pytest.raises(ValueError, match=r"one per class \(2: background, lung\), got 3 values"):
        load_config(None, ["data=some/folder", "pl_threshold=[0, 0.3, 0.6]"])


@pytest.mark.parametrize("values, message", [
    ("[0.5, nan, 0, 0]", r"pl_threshold\[1\] \(lung\) must be finite, got nan"),
    ("[0.5, 0, 0, 1.5]",
     r"pl_threshold\[3\] \(clavicle\) must be <= 1 \(a higher one keeps no pseudo-label\), got 1.5"),
    ("[0.5, high, 0, 0]", r"pl_threshold must be a number or a list of numbers \(one per class\)"),
    ("[0.5, true, 0, 0]", r"pl_threshold must be a number or a list of numbers"),
    ("[[0.5], 0, 0, 0]", r"pl_threshold must be a number or a list of numbers"),
    ("high", r"pl_threshold must be a number or a list of numbers \(one per class\), got 'high'"),
])
def test_bad_values_name_the_class(values, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [f"pl_threshold={values}"])


def test_other_keys_still_take_one_value():
    with pytest.raises(ValueError, match=r"lr must be float, got \[0.1\]"):
        load_config(None, ["lr=[0.1]"])


def test_zero_keeps_every_pseudo_label_of_its_class():
    """As the single number 0 (no threshold), a 0 in the list keeps even negative similarities."""
    assert labeler_threshold(0.0) is None and labeler_threshold(0.3) == 0.3
    assert labeler_threshold([0.0, 0.3, -0.5]) == [-math.inf, 0.3, -0.5]


def test_each_class_keeps_its_pixels_above_its_own_threshold():
    """Hard labels on a cosine bank: the confidence is the nearest similarity. Class 0's
    threshold drops every class-0 pixel; class 1's keeps all of its own, so the run's kept
    pixels are exactly the class-1 ones of the unthresholded labels."""
    config = load_config(None, ["data=some/folder", "width=4", "image_size=16", "tap_size=16", "pl_mode=hard",
                                "bank_capacity=512"])
    teacher = UNet(1, 2, config.width, config.depth).eval()
    generator = torch.Generator().manual_seed(0)
    images, masks = torch.rand(2, 1, 16, 16, generator=generator), torch.zeros(2, 16, 16, dtype=torch.long)
    masks[:, :, 8:] = 1
    unlabelled = torch.rand(2, 1, 16, 16, generator=generator)
    labels = {}
    for threshold in ([0.0, 0.0], [1.0, -1.0]):
        config.pl_threshold = threshold
        source = ReferencePseudoLabels(teacher, config, 2, "cpu")
        source.refresh(images, masks, batch_size=2)
        labels[threshold[0]] = source(unlabelled).labels
    plain, thresholded = labels[0.0], labels[1.0]
    assert (plain == 0).any() and (plain == 1).any() and (plain != 255).all()  # both classes, none dropped
    assert torch.equal(thresholded, torch.where(plain == 1, 1, 255))


def test_train_warns_of_a_command_line_setting_the_method_never_reads(tmp_path, capsys):
    """pl_threshold under meanteacher-pl trained as if it were not there, without a word."""
    from refmatch.__main__ import main
    from test_recipes import TINY

    main(["train", *TINY, "--out", str(tmp_path / "run"), "method=meanteacher-pl", "steps=1", "pl_threshold=0.5"])
    err = capsys.readouterr().err
    assert "refmatch train: warning: method=meanteacher-pl never reads tap_size, bank_capacity, bank_refresh_every, " \
           "pl_threshold (given on the command line)" in err
