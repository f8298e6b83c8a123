"""One long-lived process (a notebook, a script looping over configs): a run leaves the process
as it found it once closed, and a failed run does not block the next."""
import logging
import warnings

import pytest
import torch

pytest.importorskip("yaml", reason="the train extra is not installed")

from refmatch.recipes.config import load_config  # noqa: E402
from refmatch.recipes.train import Trainer  # noqa: E402
from test_recipes import TINY  # noqa: E402


def test_a_trainer_in_a_with_block_lets_go_of_its_folder_and_hooks(tmp_path):
    """A fit that raised kept the folder's lock, log handlers and the teacher's hooks: a retry in
    the same folder was refused as 'in use by another refmatch run', and later runs logged into
    the dead run's train.log."""
    config = load_config(None, TINY + ["method=refmatch", "steps=2"])
    with pytest.raises(RuntimeError, match="the user's own bug"):
        with Trainer(config, tmp_path) as trainer:
            raise RuntimeError("the user's own bug")
    hooks = [len(module._forward_hooks) for module in trainer.teacher.modules()]
    assert sum(hooks) == 0, "the feature tap's hooks are gone"
    assert not logging.getLogger("refmatch").handlers
    with pytest.raises(BlockingIOError, match="held by a run in this process that was not closed"):
        unclosed = Trainer(config, tmp_path, overwrite=True)
        Trainer(config, tmp_path, overwrite=True)
    unclosed.close()
    with Trainer(config, tmp_path, overwrite=True) as retry:  # the folder is free again
        retry.fit()


def test_a_run_leaves_the_global_generator_warnings_and_logger_as_it_found_them(tmp_path):
    """Each run re-seeded torch's global generator with its config's seed, so a caller's draws
    between runs repeated; two runs closed in the order they were built left the first one's
    warning display installed for good."""
    logger = logging.getLogger("refmatch")
    shown, level = warnings.showwarning, logger.level
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = Trainer(load_config(None, TINY + ["steps=2"]), tmp_path / "a")
    try:
        assert torch.equal(torch.rand(3), expected)
        second = Trainer(load_config(None, TINY + ["steps=2", "seed=1"]), tmp_path / "b")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a class lost to downsampling")  # goes to the latest run's train.log
    finally:
        first.close()
    second.close()
    assert "a class lost to downsampling" in (tmp_path / "b" / "train.log").read_text()
    assert warnings.showwarning is shown and logger.level == level


def test_a_run_that_fails_while_it_is_set_up_leaves_nothing_attached(tmp_path):
    """Its log handlers and the warning display stayed, and every later run logged into its train.log."""
    pytest.importorskip("tensorboard")
    from refmatch.recipes import run_context

    shown = warnings.showwarning
    (tmp_path / "tensorboard").write_text("a file where the run's TensorBoard folder goes")
    with pytest.raises(OSError):
        Trainer(load_config(None, TINY + ["steps=2"]), tmp_path)
    assert run_context._open_runs == [] and not logging.getLogger("refmatch").handlers
    assert warnings.showwarning is shown
