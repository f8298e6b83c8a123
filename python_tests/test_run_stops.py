"""Stopping a training run: Ctrl-C, SIGTERM, SIGUSR1 and SIGHUP finish the step and save it."""
import pytest

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from refmatch.recipes.checkpoint import load  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from test_recipes import TINY  # noqa: E402


def interrupt_at(trainer, monkeypatch, step, times=1, number=None):
    """Signal ``number`` (SIGINT by default) ``times`` during ``trainer``'s step ``step`` + 1."""
    import os
    import signal

    train_step = trainer.train_step

    def interrupted_step():
        if trainer.step == step:
            for _ in range(times):
                os.kill(os.getpid(), number or signal.SIGINT)
        return train_step()
    monkeypatch.setattr(trainer, "train_step", interrupted_step)


def test_ctrl_c_finishes_the_step_saves_and_resumes(tmp_path, monkeypatch, caplog):
    """SIGINT during step 3 of 6: the step ends, latest.pt holds step 3 (eval_every is 2),
    KeyboardInterrupt follows; a second SIGINT stops at once; one in the last step stops
    before the test, which the next resume runs."""
    import signal

    from refmatch.recipes.train import Trainer

    config = load_config(None, TINY + ["steps=6"])
    outside = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest was started in the background
    trainer = Trainer(config, tmp_path)
    try:
        interrupt_at(trainer, monkeypatch, 2, times=2)
        with pytest.raises(KeyboardInterrupt):  # twice: at once, inside the step
            trainer.fit()
        assert load(tmp_path / "latest.pt")["step"] == 2
        monkeypatch.undo()
        interrupt_at(trainer, monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert trainer.step == 3 and load(tmp_path / "latest.pt")["step"] == 3
        assert "stopped at step 3 of 6 (SIGINT)" in caplog.text
    finally:
        trainer.run.close()
    assert signal.getsignal(signal.SIGINT) is outside  # put back
    resumed = Trainer(config, tmp_path, resume=True)
    try:
        interrupt_at(resumed, monkeypatch, 5)
        with pytest.raises(KeyboardInterrupt):
            resumed.fit()
        assert load(tmp_path / "latest.pt")["step"] == 6 and not (tmp_path / "metrics.json").exists()
    finally:
        resumed.run.close()
    finished = Trainer(config, tmp_path, resume=True)
    try:
        assert finished.fit()["config"]["steps"] == 6 and (tmp_path / "metrics.json").exists()
    finally:
        finished.run.close()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGHUP"])
def test_a_stop_signal_finishes_the_step_saves_and_exits_with_128_plus_it(tmp_path, monkeypatch, caplog, name):
    """Preemption (SIGTERM), sbatch --signal's SIGUSR1 and a closed terminal's SIGHUP (those two
    killed the run, nothing saved): the step ends and is saved, exit 128 + signal, old handler back."""
    import signal
    from refmatch.recipes.train import Trainer

    number = signal.Signals[name]
    outside = signal.getsignal(number)
    if outside is signal.SIG_IGN:  # under nohup, say: it stays ignored
        pytest.skip(f"{name} is ignored here")
    trainer = Trainer(load_config(None, TINY + ["steps=6"]), tmp_path)
    try:
        interrupt_at(trainer, monkeypatch, 2, number=number)
        with pytest.raises(SystemExit) as stopped:
            trainer.fit()
        assert stopped.value.code == 128 + number
        assert trainer.step == 3 and load(tmp_path / "latest.pt")["step"] == 3
        assert f"stopped at step 3 of 6 ({name})" in caplog.text
    finally:
        trainer.run.close()
    assert signal.getsignal(number) is outside
