"""refmatch compare-pseudo-labels on a tiny phantom run."""
import importlib.util
import json

import pytest

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from refmatch.__main__ import main  # noqa: E402
from test_recipes import TINY  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run trained with pl_consensus=true, which the settings must not inherit (tap_size=16, from
    TINY, they do: it must divide the run's image size)."""
    run = tmp_path_factory.mktemp("run")
    main(["train", *TINY, "--out", str(run), "method=supervised", "steps=2", "pl_consensus=true"])
    return run


def test_scores_each_setting_and_draws_them(tiny_run, tmp_path, capsys, monkeypatch):
    import sys

    from PIL import Image

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars show on a terminal only
    settings = ["method=meanteacher-pl", "pl_mode=hard", "pl_mode=soft,pl_k=3"]
    main(["compare-pseudo-labels", "--run", str(tiny_run), "--images", "3", "--out", str(tmp_path),
          *[part for setting in settings for part in ("--setting", setting)]])
    if importlib.util.find_spec("tqdm"):  # the progress bar: 3 images x 3 settings
        assert "9/9" in capsys.readouterr().err
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [row["setting"] for row in report["rows"]] == settings and report["images"] == 3
    assert report["classes"] == ["background", "lung", "heart", "clavicle"] and report["checkpoint"] == "best.pt"
    for row in report["rows"]:
        assert 0.0 <= row["kept"] <= 1.0 and all(0.0 <= row[f"dice_{c}"] <= 1.0 for c in range(4))
    assert (tmp_path / "compare.md").read_text().count("\n| pl_mode") == 2
    with Image.open(tmp_path / "compare.png") as picture:
        width, height = picture.size
    # 32-pixel images drawn at 128; a title strip of two lines ("pl_mode=soft", "pl_k=3"); a legend
    assert width == 130 * (2 + len(settings)) and height == 30 + 130 * 3 + 18


@pytest.mark.parametrize("setting, message", [("pl_k", "override must be key=value"),
                                              ("pl_mood=soft", "pl_mood does not shape pseudo-labels"),
                                              ("method=supervised", "makes no pseudo-labels"),
                                              # would fail against the run's teacher, or change nothing
                                              ("image_size=16,tap_size=16", "image_size does not shape pseudo-labels"),
                                              ("pl_mode=hard,width=4", "width does not shape pseudo-labels")])
def test_bad_settings_are_named(tiny_run, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        main(["compare-pseudo-labels", "--run", str(tiny_run), "--setting", setting, "--out", str(tmp_path)])


def test_settings_start_from_the_plain_defaults_not_the_run(tiny_run):
    from refmatch.recipes.compare_pseudo_labels import compare

    settings = ["pl_mode=hard", "pl_mode=hard,tap_size=32", "pl_mode=hard,pl_consensus=true"]
    rows, _, _, _, outputs = compare(tiny_run, settings, num_images=3)
    kept = {row["setting"]: row["kept"] for row in rows}
    assert kept["pl_mode=hard"] == kept["pl_mode=hard,tap_size=32"] == 1.0
    assert kept["pl_mode=hard,pl_consensus=true"] < 1.0
    assert not outputs["pl_mode=hard"].equal(outputs["pl_mode=hard,tap_size=32"]), "the run's tap_size is 16"


def test_reads_the_runs_own_split_and_leaves_it_alone(tmp_path):
    """The unlabelled images scored are the run's splits.json's (here cut to two), and the file
    is not rewritten from the config; without it the command says so. The run's 48 x 48 images
    take no 32 x 32 features: a setting keeps the run's tap_size unless it names one."""
    run = tmp_path / "run"
    main(["train", *TINY, "--out", str(run), "method=supervised", "steps=2", "image_size=48"])
    splits = json.loads((run / "splits.json").read_text())
    splits["unlabeled"], splits["counts"]["unlabeled"] = splits["unlabeled"][:2], 2
    (run / "splits.json").write_text(json.dumps(splits))
    before = (run / "splits.json").read_bytes()
    main(["compare-pseudo-labels", "--run", str(run), "--images", "8", "--out", str(tmp_path / "out"),
          "--setting", "pl_mode=hard"])
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["images"] == 2
    assert (run / "splits.json").read_bytes() == before
    (run / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match="splits.json not found"):
        main(["compare-pseudo-labels", "--run", str(run), "--out", str(tmp_path / "failed")])
    assert not (run / "splits.json").exists() and not (tmp_path / "failed").exists()  # no empty folder left
    with pytest.raises(FileNotFoundError, match=r"run/run/best.pt \(--checkpoint names a file inside --run: best.pt"):
        main(["compare-pseudo-labels", "--run", str(run), "--checkpoint", "run/best.pt"])  # evaluate's form
    with pytest.raises(NotADirectoryError, match=r"--out .*best.pt/compare.md: .*best.pt is not a folder"):
        main(["compare-pseudo-labels", "--run", str(run), "--out", str(run / "best.pt")])  # before the work


def test_default_settings_a_run_cannot_take_or_repeats_are_left_out(capsys):
    from refmatch.recipes.compare_pseudo_labels import DEFAULT_SETTINGS, default_settings
    from refmatch.recipes.config import load_config

    small = default_settings(load_config(None, ["image_size=32", "tap_size=16"]))
    assert small == [text for text in DEFAULT_SETTINGS if "tap_size=64" not in text]
    assert "left out the default setting 'pl_mode=hard,tap_size=64': image_size=32 must be divisible" in \
        capsys.readouterr().err  # stderr: stdout is the table
    at_64 = default_settings(load_config(None, ["image_size=128", "tap_size=64"]))
    assert at_64 == small
    assert "'pl_mode=hard,tap_size=64': the same as 'pl_mode=hard' here" in capsys.readouterr().err


def test_score_leaves_pixels_the_truth_ignores_out():
    import torch

    from refmatch.recipes.compare_pseudo_labels import score

    row = score(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 1, 255, 255]]), 2)
    assert (row["kept"], row["accuracy"], row["dice_1"], row["recall_1"]) == (1.0, 1.0, 1.0, 1.0)


def test_a_class_the_truth_lacks_is_undefined_not_missed():
    """Perfect pseudo-labels of images without class 2 read "–" there, not recall and Dice 0;
    a class only the pseudo-labels hold has Dice 0 (wrong pixels) and no recall."""
    import math

    import torch

    from refmatch.recipes.compare_pseudo_labels import markdown, score

    row = score(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 1, 0]]), 3)
    assert (row["recall_1"], row["dice_1"]) == (1.0, 1.0)
    assert math.isnan(row["recall_2"]) and math.isnan(row["dice_2"])
    line = markdown([{**row, "setting": "s", "ms_per_image": 1.0}], ["background", "lung", "heart"]).splitlines()[-1]
    assert line == "| s | 1.000 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | 1.0000 | – | – | 1.0 |"
    row = score(torch.tensor([[0, 2, 1, 0]]), torch.tensor([[0, 1, 1, 0]]), 3)
    assert math.isnan(row["recall_2"]) and row["dice_2"] == 0.0
    assert math.isnan(score(torch.tensor([[255, 255]]), torch.tensor([[0, 1]]), 2)["accuracy"])  # nothing kept


def test_a_settings_first_call_setup_is_not_timed(tiny_run, monkeypatch):
    """The first call of a pseudo-label source may set up (a backend, a compile): a source whose
    first call takes 3 s and the rest nothing must time at the images' own cost: timed, that call
    alone would add 1000 ms to each of the 3 images (the real cost stays far below it, even on a
    loaded 2-core host, where a 0.5 s first call against a 100 ms bound failed)."""
    import time

    from refmatch.recipes import compare_pseudo_labels

    make_source = compare_pseudo_labels.pseudo_label_source

    def slow_to_start(*args):
        source, calls = make_source(*args), []

        class FirstCallSlow:
            def refresh(self, *refresh_args):
                source.refresh(*refresh_args)

            def __call__(self, images):
                if not calls:
                    time.sleep(3.0)
                calls.append(images.shape[0])
                return source(images)
        return FirstCallSlow()

    monkeypatch.setattr(compare_pseudo_labels, "pseudo_label_source", slow_to_start)
    rows, *_ = compare_pseudo_labels.compare(tiny_run, ["pl_mode=hard"], num_images=3)
    assert rows[0]["ms_per_image"] < 1000


def test_a_setting_may_list_a_value():
    """Commas inside [...] belong to a list value (per-class thresholds, tap layers)."""
    from refmatch.recipes.compare_pseudo_labels import parse_setting
    from refmatch.recipes.config import load_config

    setting = parse_setting("pl_mode=hard,pl_threshold=[0.5, 0.2,0.3,0.1],tap_layers=[decoder.up2,decoder.up1]",
                            load_config(None, []))
    assert (setting.pl_mode, setting.pl_threshold, setting.tap_layers) == \
        ("hard", [0.5, 0.2, 0.3, 0.1], ["decoder.up2", "decoder.up1"])
    with pytest.raises(ValueError, match=r"setting 'pl_threshold=\[0.5,0.2\]': pl_threshold must be one number or one"):
        parse_setting("pl_threshold=[0.5,0.2]", load_config(None, []))
    spaced = parse_setting("pl_mode=hard, pl_threshold=[0.5, 0.2, 0.3, 0.1]", load_config(None, []))  # as typed
    assert (spaced.pl_mode, spaced.pl_threshold) == ("hard", [0.5, 0.2, 0.3, 0.1])
    with pytest.raises(ValueError, match=r"setting 'pl_threshold=\[0.5,0.2' leaves a \[ unclosed"):
        parse_setting("pl_threshold=[0.5,0.2", load_config(None, []))
    with pytest.raises(ValueError, match=r"setting 'pl_k=1\],pl_threshold=\[0.5' has a \] before its \["):
        parse_setting("pl_k=1],pl_threshold=[0.5", load_config(None, []))  # as many [ as ]


@pytest.mark.parametrize("text, unread", [("method=meanteacher-pl,pl_threshold=0.5", "pl_threshold"),
                                          ("method=meanteacher-pl,pl_mode=hard,pl_k=1", "pl_mode, pl_k"),
                                          ("pl_mode=hard,confidence_threshold=0.5", "confidence_threshold")])
def test_a_setting_the_method_never_reads_is_refused(text, unread):
    """Its row was named after a change that changed nothing (three identical rows)."""
    from refmatch.recipes.compare_pseudo_labels import parse_setting
    from refmatch.recipes.config import load_config

    with pytest.raises(ValueError, match=rf"never reads {unread}"):
        parse_setting(text, load_config(None, []))
