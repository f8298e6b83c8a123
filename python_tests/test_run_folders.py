"""Run folders survive failures: an overwrite or a new run that fails before training leaves the
folder as it was, a finished run keeps its result (stop signals: test_run_stops)."""
import json

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import load  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from test_recipes import TINY  # noqa: E402


def test_an_overwrite_that_fails_before_training_keeps_the_earlier_run(tmp_path):
    """--overwrite with inputs that fail (here a missing data folder) leaves the earlier run as
    it was; the failed run's log handlers are gone, so the next run's lines stay out of its log."""
    import logging

    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=2", "seed=0", "--out", str(run)])
    def files():  # but the lock's note of its last holder
        return {path.relative_to(run): path.read_bytes() for path in run.rglob("*") if path.is_file()
                and path.name != ".lock"}
    before = files()
    handlers = list(logging.getLogger("refmatch").handlers)
    with pytest.raises(FileNotFoundError, match="missing/images not found"):
        main(["train", *TINY, "steps=2", f"data={tmp_path / 'missing'}", "--out", str(run), "--overwrite"])
    assert files() == before and not (run / ".overwritten").exists()
    assert logging.getLogger("refmatch").handlers == handlers


def test_a_new_run_keeps_off_an_earlier_runs_folder_unless_told_to_overwrite(tmp_path):
    """A folder holding checkpoints is refused (its work would be lost); --overwrite starts over
    with the new settings' splits. A folder with only a stale splits.json gets new splits."""
    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=2", "seed=0", "--out", str(run)])
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        main(["train", *TINY, "steps=2", "seed=1", "labeled_fraction=0.5", "--out", str(run)])
    main(["train", *TINY, "steps=2", "seed=1", "labeled_fraction=0.5", "--out", str(run), "--overwrite"])
    splits = json.loads((run / "splits.json").read_text())
    assert splits["seed"] == 1 and splits["counts"]["labeled"] == 8  # 3 at labeled_fraction=0.2
    for name in ("latest.pt", "best.pt", "metrics.json"):
        (run / name).unlink()
    main(["train", *TINY, "steps=2", "seed=2", "--out", str(run)])
    assert json.loads((run / "splits.json").read_text())["seed"] == 2


def test_a_resume_goes_on_or_keeps_a_finished_result(tmp_path, monkeypatch, capsys):
    from refmatch.__main__ import main
    from refmatch.recipes import train

    run = tmp_path / "sup"
    main(["train", *TINY, "method=supervised", "steps=2", "--out", str(run)])
    assert sorted(path.name for path in (run / "images").iterdir()) == ["step_000002.png"]  # supervised too
    with pytest.raises(ValueError, match="steps=1 is below the 2 steps the run has trained"):
        main(["train", "--out", str(run), "--resume", "steps=1"])
    with pytest.raises(SystemExit):
        main(["train", "--out", str(run), "--resume", "--stop-at", "2"])
    assert "--stop-at 2 is not after the step" in capsys.readouterr().err
    with pytest.raises(IsADirectoryError, match="is a folder: name the file to write"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "phantom", "--out", str(run)])
    state = torch.load(run / "best.pt", weights_only=False)
    state["config"]["pl_future_knob"] = 1
    torch.save(state, run / "newer.pt")
    with pytest.raises(ValueError, match=r"config holds keys this refmatch does not know: \['pl_future_knob'\]"):
        main(["evaluate", "--checkpoint", str(run / "newer.pt"), "--data", "phantom"])
    monkeypatch.setattr(train.Trainer, "finish", lambda self: pytest.fail("a finished run was tested again"))
    assert main(["train", "--out", str(run), "--resume"]) == 0
    # Taken further and stopped: the 2-step result no longer reads as the run's (best.pt moved on).
    finished = (run / "metrics.json").read_text()
    main(["train", "--out", str(run), "--resume", "steps=4", "--stop-at", "3"])
    assert not (run / "metrics.json").exists() and (run / "metrics_at_step_2.json").read_text() == finished
    monkeypatch.undo()  # the new run is tested
    main(["train", *TINY, "method=supervised", "steps=2", "--out", str(run), "--overwrite"])
    assert not (run / "metrics_at_step_2.json").exists(), "the overwritten run's, naming a best.pt gone"


def test_a_run_stopped_while_writing_its_first_latest_pt_resumes_from_best_pt(tmp_path, caplog):
    """best.pt is written just before latest.pt: a kill between them left a run that neither
    resumed (no latest.pt) nor restarted (it holds best.pt)."""
    import shutil

    from refmatch.__main__ import main

    run, killed = tmp_path / "run", tmp_path / "killed"
    main(["train", *TINY, "steps=4", "--out", str(run), "--stop-at", "2"])
    shutil.copytree(run, killed)
    (killed / "latest.pt").unlink()
    for folder in (run, killed):
        main(["train", "--out", str(folder), "--resume"])
    assert "no latest.pt (stopped while writing it?): resuming from best.pt" in caplog.text
    assert json.loads((killed / "metrics.json").read_text())["test"] == json.loads((run / "metrics.json").read_text())["test"]


def test_tensorboard_keeps_one_point_per_step_across_a_kill_and_resume(tmp_path):
    """A kill after a step was logged but before its checkpoint: the resumed run logs that step
    again, and the stopped part's point is purged (two points zigzagged on a GPU)."""
    import shutil

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=4", "--out", str(run), "--stop-at", "2"])
    shutil.copy(run / "latest.pt", tmp_path / "step2.pt")
    main(["train", "--out", str(run), "--resume", "--stop-at", "3"])  # logs step 3, saves it ...
    shutil.copy(tmp_path / "step2.pt", run / "latest.pt")  # ... which the kill would have lost
    main(["train", "--out", str(run), "--resume"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss/total")] == [1, 2, 3, 4]


def test_a_second_run_in_a_live_runs_folder_is_refused_and_stale_temporaries_go(tmp_path):
    """A --resume started twice trained twice into one folder; a killed write's temp file stayed."""
    from refmatch.recipes.run_lock import RunFolderLock
    from refmatch.recipes.train import Trainer

    run = tmp_path / "run"
    first = Trainer(load_config(None, TINY + ["steps=2"]), run)
    try:
        with pytest.raises(BlockingIOError, match="is held by a run in this process that was not closed"):
            RunFolderLock(run)
        assert (run / ".lock").exists()
    finally:
        first.run.close()
    (run / ".latest.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    (run / "images").mkdir(exist_ok=True)
    (run / "images" / ".step_000003.png.a1b2.tmp").write_bytes(b"half a grid")
    RunFolderLock(run).release()  # free again once the run ended; the file stays (deleting it raced)
    assert not list(run.rglob(".*.tmp")) and (run / ".lock").exists()


def test_an_overwrite_refused_by_a_live_run_moves_nothing(tmp_path):
    """fresh_run moved the live run's outputs aside before the lock was tried: a checkpoint the
    live run wrote meanwhile was lost when the refused run put the older ones back."""
    from refmatch.__main__ import main
    from refmatch.recipes.train import Trainer

    run = tmp_path / "run"
    main(["train", *TINY, "steps=2", "--out", str(run)])
    live = Trainer(load_config(None, TINY + ["steps=4"]), run, resume=True)
    try:
        before = sorted(path.name for path in run.iterdir())
        with pytest.raises(BlockingIOError, match="is held by a run in this process that was not closed"):
            main(["train", *TINY, "steps=2", "--out", str(run), "--overwrite"])
        assert sorted(path.name for path in run.iterdir()) == before and not (run / ".overwritten").exists()
    finally:
        live.run.close()


def test_a_warning_becomes_one_line_of_the_log(tmp_path):
    """At 4x4 features of 32x32 phantoms the clavicles keep no pixel: the bank warns at every
    refresh (Python shows it again whenever evaluation changes its filters), train.log once."""
    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *TINY, "steps=6", "tap_size=4", "method=refmatch", "--out", str(run)])
    log = (run / "train.log").read_text()
    assert log.count("UserWarning: class(es) [3] of the masks kept no pixel at the features' 4x4") == 1


@pytest.mark.parametrize("folder_existed", [False, True])
def test_a_new_run_that_fails_before_training_leaves_the_folder_as_it_was(tmp_path, folder_existed):
    """A pl_k the labelled pixels cannot fill is refused before any step; the failed run's log,
    splits and TensorBoard folder go, and so do the folders it made (a user's files stay)."""
    from refmatch.__main__ import main

    run = tmp_path / "new" / "run"
    if folder_existed:
        run.mkdir(parents=True)
        (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"pl_k=5000 but the labelled images give the bank \d+ pixels"):
        main(["train", *TINY, "steps=2", "pl_mode=soft", "pl_k=5000", "--out", str(run)])
    if folder_existed:
        assert [path.name for path in run.iterdir()] == ["notes.txt"]
    else:
        assert not (tmp_path / "new").exists()


def test_a_run_on_a_relative_data_folder_resumes_from_anywhere(tmp_path, monkeypatch):
    """The saved config held the data folder as given: a resume from another directory did not
    find it, while a resume naming it relative again (scripts/lung_experiment.sh) must still work."""
    from PIL import Image

    from refmatch.__main__ import main
    from refmatch.data.phantoms import make_phantom

    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(12):
        image, mask = make_phantom(i, size=32)
        Image.fromarray((255 * image[0]).byte().numpy()).save(tmp_path / "data" / "images" / f"p{i:02d}.png")
        Image.fromarray(mask.clamp(max=1).byte().numpy()).save(tmp_path / "data" / "masks" / f"p{i:02d}.png")
    folder_run = [item for item in TINY if not item.startswith(("data=", "num_phantoms="))]
    monkeypatch.chdir(tmp_path)
    main(["train", *folder_run, "data=data", "steps=4", "--out", "run", "--stop-at", "2"])
    assert load(tmp_path / "run" / "latest.pt", required=("config",))["config"]["data"] == str(tmp_path / "data")
    main(["train", *folder_run, "data=data", "steps=4", "--out", "run", "--resume", "--stop-at", "3"])
    monkeypatch.chdir(tmp_path / "run")
    main(["train", "--out", ".", "--resume"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["steps"] == 4


def test_a_full_disk_is_an_error_naming_the_file(tmp_path):
    """torch's writer turned ENOSPC into a RuntimeError about a stream position: a traceback;
    TensorBoard's writer thread gave the bare OSError, naming no file."""
    import errno

    from refmatch.atomic_file import write_atomic

    def full(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"No space left on device: '.*latest.pt'"):
        write_atomic(tmp_path / "latest.pt", full)
    assert not list(tmp_path.iterdir())
    from refmatch.recipes.train import Trainer

    from refmatch.recipes.run_lock import RunFolderLock

    with Trainer(load_config(None, TINY + ["steps=2"]), tmp_path / "run") as trainer:
        writer = trainer.run.writer  # its thread's error comes back on each call, close() too
        writer.add_scalar, close = (lambda *args: full(None)), writer.close
        writer.close = lambda: (close(), full(None))
        with pytest.raises(OSError, match=r"No space left on device \(writing TensorBoard's events\): '.*tensorb"):
            trainer.fit()
    assert "failed at step 1: OSError: [Errno 28] No space left" in (tmp_path / "run" / "train.log").read_text()
    RunFolderLock(tmp_path / "run").release()  # closing released it: the error of close() was not the end
