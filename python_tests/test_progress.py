"""Progress of long work: bars on a terminal only, and log lines with the pace and the time left."""
import logging

import pytest

from refmatch.recipes.progress import _SilentBar, _duration, progress_bar, reported_steps


def test_a_line_each_tenth_of_the_steps_and_none_after_the_last(caplog):
    caplog.set_level(logging.INFO, logger="refmatch.test")
    steps = list(reported_steps(range(20, 45), _SilentBar(), logging.getLogger("refmatch.test")))
    assert steps == list(range(20, 45))
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(",")[0] for line in lines] == ["step 23/45", "step 25/45", "step 28/45", "step 30/45",
                                                      "step 33/45", "step 35/45", "step 38/45", "step 40/45",
                                                      "step 43/45"]  # 25 steps: tenths end at 2.5, 5, ...
    assert "s a step, about 0m00s left" in lines[-1]


def test_lines_before_pseudo_labels_start_say_the_estimate_will_grow(caplog):
    """The main job's estimate at step 300 said 16 s, but pseudo-labels from there made each step
    six times slower: the lines up to that step say so, the later ones (paced on them) do not."""
    caplog.set_level(logging.INFO, logger="refmatch.test")
    list(reported_steps(range(0, 20), _SilentBar(), logging.getLogger("refmatch.test"), slower_from=10))
    lines = [record.getMessage() for record in caplog.records]
    named = [line.split(",")[0] for line in lines
             if line.endswith("left at this pace; more, as pseudo-labels from step 11 make steps slower")]
    assert named == ["step 2/20", "step 4/20", "step 6/20", "step 8/20", "step 10/20"] and len(lines) == 9


@pytest.mark.parametrize("seconds, text", [(0.4, "0m00s"), (61, "1m01s"), (3599.6, "1h00m"), (7322, "2h02m")])
def test_durations_read_as_minutes_or_hours(seconds, text):
    assert _duration(seconds) == text


def test_no_bar_where_stderr_is_no_terminal(monkeypatch):
    """A cluster job's redirected output would fill with the bar's carriage returns."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert isinstance(progress_bar(10, "train"), _SilentBar)


def test_progress_bar_without_tqdm_shows_nothing_and_takes_the_same_calls(monkeypatch, capfd):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)  # where tqdm would draw a bar
    bar = progress_bar(10, "pseudo-label")
    assert isinstance(bar, _SilentBar)
    bar.update(4)
    bar.set_postfix(loss="0.1")
    bar.close()
    assert capfd.readouterr() == ("", "")


def test_commands_without_a_terminal_get_a_line_each_tenth(monkeypatch, capfd):
    """refmatch pseudo-label over 240 images ran 21 s with nothing between its first and last
    lines where stderr went to a file; the training bar (lines=False) keeps its own log lines."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    bar = progress_bar(25, "pseudo-label", initial=5, lines=True)
    for _ in range(20):
        bar.update(1)
    bar.close()
    lines = capfd.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"pseudo-label: {done}/25 images"
                                                      for done in (8, 10, 13, 15, 18, 20, 23)]
    assert lines[-1].endswith(" s per image, about 0m00s left")
    assert isinstance(progress_bar(25, "train", lines=False), _SilentBar)
    monkeypatch.setenv("RANK", "1")
    assert isinstance(progress_bar(25, "pseudo-label", lines=True), _SilentBar)  # rank 0's alone

