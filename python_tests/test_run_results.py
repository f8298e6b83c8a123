"""What a run folder's files say when read back: a finished result that stands, a checkpoint
that is missing for a reason."""
import json

import pytest

pytest.importorskip("yaml", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import finished_result, load_latest  # noqa: E402


def test_a_finished_result_stands_only_for_the_runs_own_step_count(tmp_path):
    """A resume taking a finished run further, killed before its test, left the shorter run's
    metrics.json, which then stood as the longer run's result."""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"config": {"steps": 4}, "test": {}}))
    assert finished_result(path, 4) == {"config": {"steps": 4}, "test": {}}
    assert finished_result(path, 6) is None
    path.write_text('{"config": {"steps": 4}')  # cut off mid-write
    assert finished_result(path, 4) is None
    assert finished_result(tmp_path / "none.json", 4) is None


def test_resume_without_a_checkpoint_says_why_and_what_to_do(tmp_path):
    """An --overwrite killed before the new run saved left the earlier run hidden in .overwritten/,
    and a run stopped before its first checkpoint: both said only "checkpoint not found"."""
    (tmp_path / ".overwritten").mkdir()
    for name in ("best.pt", "train.log", "splits.json"):
        (tmp_path / ".overwritten" / name).write_bytes(b"earlier run")
    (tmp_path / "splits.json").write_text("{}")  # the stopped run's: moving the earlier one back would fail on it
    expected = (r"latest.pt; an --overwrite was stopped .* waits in .*\.overwritten: to resume that run, delete "
                r"what the stopped run wrote \(splits.json\), then move .overwritten's files back")
    with pytest.raises(FileNotFoundError, match=expected):
        load_latest(tmp_path)
    for name in ("best.pt", "train.log", "splits.json"):
        (tmp_path / ".overwritten" / name).unlink()
    (tmp_path / "train.log").write_text("")
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint: start it again without --resume"):
        load_latest(tmp_path)


def test_a_checkpoint_that_is_a_folder_says_which_file_to_name(tmp_path):
    from refmatch.recipes.checkpoint import load

    with pytest.raises(IsADirectoryError, match=r"is a folder: name the file in it \(a run's best.pt or latest.pt"):
        load(tmp_path)


def test_a_run_set_aside_by_a_stopped_overwrite_is_refused_or_overwritten(tmp_path, monkeypatch):
    """A new run there went on without a word and left .overwritten/ behind for good."""
    from refmatch.recipes.run_folders import fresh_run

    aside = tmp_path / ".overwritten"
    aside.mkdir()
    (aside / "latest.pt").write_bytes(b"earlier run")
    with pytest.raises(FileExistsError, match=r"\.overwritten holds the earlier run that an --overwrite set aside"):
        with fresh_run(tmp_path):
            pass
    with pytest.raises(RuntimeError):  # a new run that fails to build keeps it
        with fresh_run(tmp_path, overwrite=True):
            raise RuntimeError("bad data")
    assert (aside / "latest.pt").exists()
    monkeypatch.setenv("RANK", "1")  # under torchrun rank 0 alone deletes it: every rank raced to
    with fresh_run(tmp_path, overwrite=True):
        pass
    assert (aside / "latest.pt").exists()
    monkeypatch.setenv("RANK", "0")
    with fresh_run(tmp_path, overwrite=True):
        pass
    assert not aside.exists()


def test_a_command_reads_a_runs_data_where_it_is_now(tmp_path):
    """evaluate and compare-pseudo-labels take the run's own data by default; a relative saved path
    (an older run's) read from wherever the command ran, and a moved folder said only 'not found'."""
    from refmatch.recipes.config import TrainConfig
    from refmatch.recipes.data_setup import data_of_run

    assert data_of_run(TrainConfig(data="phantom")) == "phantom"
    assert data_of_run(TrainConfig(data=str(tmp_path))) == str(tmp_path)
    assert data_of_run(TrainConfig(data="relative/data"), "elsewhere") == "elsewhere"
    with pytest.raises(ValueError, match="saved its data folder as relative/data, relative to where it trained"):
        data_of_run(TrainConfig(data="relative/data"))
    with pytest.raises(FileNotFoundError, match=f"the run's data folder {tmp_path / 'gone'} is gone: name where"):
        data_of_run(TrainConfig(data=str(tmp_path / "gone")))


def test_a_resume_without_its_best_checkpoint_says_so_instead_of_testing_the_last_state(tmp_path):
    """best.pt deleted (or moved by an --overwrite killed part way): finish() tested the last state
    and recorded it as the best step, exit 0."""
    from refmatch.__main__ import main
    from refmatch.recipes.config import load_config
    from refmatch.recipes.train import Trainer
    from test_recipes import TINY

    run = tmp_path / "run"
    main(["train", *TINY, "steps=4", "--stop-at", "2", "--out", str(run)])
    (run / "best.pt").unlink()
    with Trainer(load_config(None, TINY + ["steps=4"]), run, resume=load_latest(run)) as trainer:
        with pytest.raises(FileNotFoundError, match=r"best.pt is gone: the run's best checkpoint \(validation "
                                                    r"mean Dice [\d.]+\) is what it tests; put it back"):
            trainer.finish()
    assert not (run / "metrics.json").exists()


def test_a_resume_without_splits_json_is_refused_instead_of_drawing_again(tmp_path):
    """A run copied without splits.json redrew its split on --resume: with images added to the
    folder, images the first leg trained on went into the test set, exit 0."""
    from refmatch.__main__ import main
    from test_recipes import TINY

    run = tmp_path / "run"
    main(["train", *TINY, "steps=4", "--stop-at", "2", "--out", str(run)])
    (run / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"splits.json is missing: the run's images were split by it"):
        main(["train", "--out", str(run), "--resume"])
