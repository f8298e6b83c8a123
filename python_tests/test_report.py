"""refmatch report: the table of finished runs, and the table across seeds that
scripts/lung_experiment.sh prints and docs/experiments.md's five-seed tables show."""
import json
import subprocess
import sys

import pytest

from refmatch.recipes.report import seed_table, table


def finished_run(folder, seed, dice, hd95, minutes):
    folder.mkdir(parents=True)
    metrics = {"method": "refmatch", "train_seconds": 60.0 * minutes, "config": {"steps": 2, "seed": seed},
               "test": {"dice": {"background": 0.9, "lung": dice}, "iou": {"background": 0.8, "lung": dice / 2},
                        "hd95": {"background": 1.0, "lung": hd95}, "mean_dice": dice, "mean_hd95": hd95}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "splits.json").write_text(json.dumps({"labeled": ["a.png"]}))
    return folder


def test_report_prints_a_null_hd95_as_inf(tmp_path):
    run = finished_run(tmp_path / "run", 0, 0.0, None, 1.0)
    assert "| 0.0000 | 0.0000 | inf | 0.0000 | 1.0 |" in table([run])


def test_an_infinite_hd95_is_broken_down_under_the_table(tmp_path):
    run = finished_run(tmp_path / "run", 0, 0.8, None, 1.0)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"].update(hd95_finite={"background": 1.0, "lung": 4.5}, hd95_inf_images={"background": 0, "lung": 2})
    (run / "metrics.json").write_text(json.dumps(metrics))
    lines = table([run, finished_run(tmp_path / "older", 0, 0.8, None, 1.0)]).splitlines()
    assert lines[-3:] == ["", "HD95 inf: a class that only the prediction or only the truth holds in an image.",
                          "- run, lung: HD95 inf in 2 test image(s), 4.50 over the others"]  # older: no breakdown


def test_a_row_per_run_name_a_column_per_seed_and_the_means(tmp_path):
    runs = [finished_run(tmp_path / "seed3" / "refmatch", 3, 0.95, 4.0, 6.0),
            finished_run(tmp_path / "seed1" / "refmatch", 1, 0.93, 6.0, 7.5),
            finished_run(tmp_path / "seed1" / "supervised", 1, 0.92, None, 1.5)]
    assert seed_table(runs).splitlines() == [
        "| run | seed 1 | seed 3 | mean test Dice | mean HD95 | minutes per run |",
        "|---|---|---|---|---|---|",
        "| refmatch | 0.9300 | 0.9500 | 0.9400 | 5.00 | 6.0–7.5 |",
        "| supervised | 0.9200 | – | – | – | 1.5–1.5 |"]  # a seed missing: no means
    runs.append(finished_run(tmp_path / "seed3" / "supervised", 3, 0.94, 3.0, 1.6))
    assert seed_table(runs).splitlines()[-1] == "| supervised | 0.9200 | 0.9400 | 0.9300 | inf | 1.5–1.6 |"


def test_two_runs_of_one_name_and_seed_are_refused_and_the_cli_takes_by_seed(tmp_path):
    runs = [finished_run(tmp_path / folder / "refmatch", 2, 0.9, 5.0, 1.0) for folder in ("a", "b")]
    with pytest.raises(ValueError, match="two runs named refmatch with seed 2: .*a/refmatch and .*b/refmatch"):
        seed_table(runs)
    (runs[0] / "splits.json").unlink()  # --by-seed reads metrics.json alone
    printed = subprocess.run([sys.executable, "-m", "refmatch.recipes.report", "--by-seed", str(runs[0])],
                             capture_output=True, text=True, check=True).stdout
    assert printed.splitlines()[2] == "| refmatch | 0.9000 | 0.9000 | 5.00 | 1.0–1.0 |"


def test_every_foreground_class_gets_its_columns_and_tasks_do_not_mix(tmp_path):
    sides = finished_run(tmp_path / "sides", 0, 0.9, 4.0, 1.0)
    metrics = json.loads((sides / "metrics.json").read_text())
    for measure, values in (("dice", (0.96, 0.94)), ("iou", (0.92, 0.89)), ("hd95", (3.0, None))):
        metrics["test"][measure] = {"background": 1.0, "right lung": values[0], "left lung": values[1]}
    (sides / "metrics.json").write_text(json.dumps(metrics))
    header, _, row = table([sides]).splitlines()
    assert header.startswith("| run | method | labelled | steps | test Dice (right lung) | test IoU (right lung) | "
                             "test HD95 (right lung) | test Dice (left lung) |")
    assert row.endswith("| 0.9600 | 0.9200 | 3.00 | 0.9400 | 0.8900 | inf | 0.9000 | 1.0 |")
    lung = finished_run(tmp_path / "lung", 1, 0.9, 4.0, 1.0)
    for report in (table, seed_table):  # by seed: two tasks' runs named alike would be averaged
        with pytest.raises(ValueError, match="report runs of one task together"):
            report([sides, lung])


def test_unfinished_missing_or_foreign_runs_are_left_out_by_name(tmp_path):
    """A run still training (no metrics.json yet), a wrong path or another tool's metrics.json: the
    table of the finished runs, each other folder named under it with why, exit 1 (one unfinished
    seed left no table at all; a foreign file raised KeyError); none finished: exit 2, one line."""
    finished = finished_run(tmp_path / "seed0" / "refmatch", 0, 0.9, 5.0, 1.0)
    (tmp_path / "seed1" / "refmatch").mkdir(parents=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "metrics.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text('{"test": ')
    reasons = {tmp_path / "seed1" / "refmatch": "no metrics.json: still training, or stopped (refmatch train --resume)",
               tmp_path / "nowhere": "no such folder", tmp_path / "a file": "not a run folder"}
    (tmp_path / "a file").write_text("")
    report = [sys.executable, "-m", "refmatch.recipes.report"]
    result = subprocess.run([*report, "--by-seed", str(finished), *map(str, reasons), str(tmp_path / "foreign"),
                             str(tmp_path / "broken")], capture_output=True, text=True)
    assert result.returncode == 1  # the seed left out took its column: no means over the other seeds
    assert result.stdout.splitlines()[2] == "| refmatch | 0.9000 | – | – | 1.0–1.0 |"
    assert result.stdout.splitlines()[-6:] == ["Left out, not finished runs of refmatch:", *(
        f"- {folder}: {why}" for folder, why in reasons.items()),
        f"- {tmp_path / 'foreign' / 'metrics.json'} is not a refmatch run's (no test scores, config and training time)",
        f"- {tmp_path / 'broken' / 'metrics.json'}: not JSON (Expecting value: line 1 column 10 (char 9))"]
    for folder, why in reasons.items():
        result = subprocess.run([*report, str(folder)], capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines()[-1] == f"refmatch report: error: {folder}: {why}"
    (finished / "splits.json").unlink()  # --by-seed never needed it; the table shows no labelled count
    assert table([finished]).splitlines()[2].startswith("| refmatch | refmatch | – | 2 |")
    (tmp_path / "seed1" / "refmatch" / ".overwritten").mkdir()  # an --overwrite killed before its test
    (tmp_path / "seed1" / "refmatch" / ".overwritten" / "metrics.json").write_text("{}")
    assert "an --overwrite stopped before its run finished; the earlier run waits" in seed_table(
        [finished, tmp_path / "seed1" / "refmatch"])


def test_undefined_scores_print_as_a_dash_and_names_stay_in_their_cells(tmp_path):
    """A class in neither the truth nor the prediction has null Dice, IoU and HD95 (the table
    raised TypeError); a | in a class name split its cell."""
    run = finished_run(tmp_path / "run", 0, 0.9, 4.0, 1.0)
    metrics = json.loads((run / "metrics.json").read_text())
    for measure, value in (("dice", None), ("iou", None), ("hd95", None)):
        metrics["test"][measure]["tri|angle"] = value
    (run / "metrics.json").write_text(json.dumps(metrics))
    header, _, row = table([run]).splitlines()
    assert "test Dice (tri\\|angle)" in header and row.endswith("| 4.00 | – | – | – | 0.9000 | 1.0 |")
    metrics["test"]["mean_dice"] = None  # no class scored at all
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert table([run]).splitlines()[2].endswith("| – | 1.0 |")
    assert seed_table([run]).splitlines()[2] == "| run | – | – | – | 1.0–1.0 |"


def test_runs_of_one_name_are_told_apart_by_their_paths(tmp_path):
    runs = [finished_run(tmp_path / f"seed{seed}" / "refmatch", seed, 0.9, 4.0, 1.0) for seed in (0, 1)]
    assert [line.split(" | ")[0] for line in table(runs).splitlines()[2:4]] == ["| seed0/refmatch", "| seed1/refmatch"]


def test_runs_tested_on_other_images_are_noted_under_both_tables(tmp_path):
    """Runs on other data folders went into one table without a word (a user's own-data review)."""
    runs = [finished_run(tmp_path / f"on_{data}", 0, 0.9, 3.0, 1.0) for data in ("a", "b")]
    for run, data in zip(runs, ("a", "b")):
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["config"]["data"] = f"/data/{data}"
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "splits.json").write_text(json.dumps({"labeled": ["x.png"], "test": [f"{data}1.png", f"{data}2.png"]}))
    expected = ("Test sets differ: rows tested on other images do not compare.\n"
                "- {}on_a on /data/a (seed 0, 2 test images); on_b on /data/b (seed 0, 2 test images)")
    assert table(runs).endswith(expected.format(""))
    assert seed_table(runs).endswith(expected.format("seed 0: "))
    assert "Test sets differ" not in table(runs[:1]) + seed_table(runs[:1])
    (runs[1] / "splits.json").unlink()  # --by-seed reads metrics.json alone: an unknown test set is no difference
    assert "Test sets differ" not in seed_table(runs)
