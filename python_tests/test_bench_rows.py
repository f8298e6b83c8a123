"""``refmatch bench`` rows in the cases a user hits: a faster GEMM of this shape, a size that
does not fit in memory, a run stopped half way; the plot's series of this shape's GEMM."""
import json
import time

import pytest

from refmatch import bench, bench_peers


def ceilings_then(methods, this_shape_flops):
    """all_methods with two stand-in ceilings, this shape's ``this_shape_flops`` a run, first."""
    def with_ceilings(query, reference, fits_bytes, only=None, exclude=(), considered=None):
        def pause():
            time.sleep(0.002)
        return [bench_peers.Method("gemm square (ceiling)", "-", 1, pause, 1e6),
                bench_peers.Method("gemm torch.mm this shape (3 rows)", "-", 1, pause, this_shape_flops)] + \
            [method for method in methods(query, reference, fits_bytes, only, exclude, considered)
             if method.metric != "-"]
    return with_ceilings


def test_vs_gemm_is_the_ratio_to_the_faster_ceiling_even_the_second(tmp_path, monkeypatch):
    """The first ceiling was yielded before the second was timed: it read 1.00 beside a faster one."""
    monkeypatch.setattr(bench, "all_methods", ceilings_then(bench_peers.all_methods, 1e9))
    bench.main(["--sizes", "16x64x8", "--only", "refmatch torch k=1", "--repeat", "1", "--out", str(tmp_path)])
    rows = {row["method"]: row for row in json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]}
    fastest = rows["gemm torch.mm this shape (3 rows)"]["tflops"]
    assert fastest > rows["gemm square (ceiling)"]["tflops"]
    for row in rows.values():
        assert row["ratio_to_gemm"] == pytest.approx(row["tflops"] / fastest)


def test_a_size_whose_inputs_do_not_fit_is_one_failed_row_and_the_run_goes_on(tmp_path, monkeypatch):
    real_oracle = bench.Float64Oracle

    def oracle(query, reference, labels, classes):
        if reference.shape[0] == 128:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return real_oracle(query, reference, labels, classes)
    monkeypatch.setattr(bench, "Float64Oracle", oracle)
    bench.main(["--sizes", "8x128x4", "8x64x4", "--only", "refmatch torch k=1", "--repeat", "1",
                "--out", str(tmp_path)])
    results = json.loads(next(tmp_path.glob("*.json")).read_text())
    failed, *rest = results["rows"]
    assert failed["m"] == 128 and failed["method"] == "inputs and float64 oracle"
    assert failed["error"].startswith("RuntimeError: [enforce fail at alloc_cpu.cpp:127]")
    assert {row["m"] for row in rest} == {64} and any(row.get("agreement") == 1.0 for row in rest)
    assert results["meta"]["complete"]


def test_a_stopped_run_says_where_its_rows_are_and_its_table_says_incomplete(tmp_path, monkeypatch, capsys):
    real_measured = bench._measured

    def measured(method, size, *arguments):
        if size["m"] == 64 and method.metric != "-":
            raise KeyboardInterrupt
        return real_measured(method, size, *arguments)
    monkeypatch.setattr(bench, "_measured", measured)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--sizes", "8x32x4", "8x64x4", "--only", "refmatch torch k=1", "--repeat", "1",
                    "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    assert not results["meta"]["complete"]
    assert {row["m"] for row in results["rows"] if row["method"] == "refmatch torch k=1"} == {32}
    table = json_path.with_suffix(".md").read_text()
    assert "**Incomplete:** the run stopped before its last row." in table
    assert "Command: `refmatch bench --sizes 8x32x4 8x64x4 --only 'refmatch torch k=1' --repeat 1 --out" in table
    rows = len(results["rows"])
    assert f"stopped: the {rows} rows so far are in {json_path.with_suffix('')}.json and .md" in capsys.readouterr().err


def test_this_shapes_gemm_is_one_series_whatever_rows_fit():
    from refmatch.bench_plot import _label, _style

    labels = {_label({"method": f"gemm torch.mm this shape ({rows} rows)", "metric": "-"}) for rows in (409, 1638)}
    assert labels == {"gemm torch.mm this shape (the rows that fit)"}
    assert _style({"method": "gemm torch.mm this shape (409 rows)"})["marker"]  # one point still shows


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_timing(tmp_path, monkeypatch, capsys):
    """It was found only when the first row was written, after the oracle and the ceiling."""
    from refmatch import bench_files

    monkeypatch.setattr(bench_files.os, "access", lambda path, mode: False)
    monkeypatch.setattr(bench, "run_size", lambda *arguments: pytest.fail("timed before the check"))
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sizes", "8x32x4", "--out", str(tmp_path / "results")])
    assert stopped.value.code == 2 and f"--out {tmp_path / 'results'}: cannot write there" in capsys.readouterr().err


def test_a_plot_that_cannot_be_written_names_its_file(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import errno

    import matplotlib.figure

    from refmatch.bench_plot import plot

    def full_disk(self, path, **options):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    row = {"method": "refmatch torch k=1", "metric": "dot", "n": 8, "m": 16, "d": 4, "dtype": "float32", "tflops": 1.0}
    with pytest.raises(OSError, match=f"No space left on device: '{tmp_path / 'full.png'}'"):
        plot([row], tmp_path / "full.png")
    assert not list(tmp_path.iterdir()), "no half picture, no temporary file"


def test_a_results_file_name_as_out_is_refused_with_its_folder(tmp_path, monkeypatch, capsys):
    """--out run.json made a folder called run.json holding the run's own files."""
    monkeypatch.setattr(bench, "run_size", lambda *arguments: pytest.fail("timed before the check"))
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sizes", "8x32x4", "--out", str(tmp_path / "run.json")])
    assert stopped.value.code == 2 and f"use --out {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()


def test_a_filter_word_no_method_holds_is_named_once_a_run(tmp_path, capsys):
    """--exclude keosp (a typo of keops) passed in silence. Words that some method holds, run
    here or left out (classwise, k=8, keops: a peer group left out before its import), do not warn."""
    bench.main(["--sizes", "8x32x4", "8x64x4", "--only", "refmatch torch", "--exclude", "keosp", "classwise", "k=8",
                "KeOps", "--repeat", "1", "--out", str(tmp_path)])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --exclude keosp: no method here holds this word; "
                                                         "methods here: ")
    assert "refmatch torch k=1" in warnings[0]


@pytest.mark.parametrize("broken_in", ["probe", "run"])
def test_a_refmatch_row_that_failed_fails_the_run_after_writing_it(tmp_path, monkeypatch, capsys, broken_in):
    """A kernel that crashed (a CUDA error in its probe, a skipped row; or in its timed run, a
    failed row) left the run's exit status 0, so gpu_suite.sh reported its stage ok."""
    match = bench_peers.refmatch.match

    def crashing(query, reference, *args, **kwargs):
        if kwargs.get("k", 1) == 8 and (query.shape[0] == 1) == (broken_in == "probe"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return match(query, reference, *args, **kwargs)
    monkeypatch.setattr(bench_peers.refmatch, "match", crashing)
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--sizes", "16x64x8", "--only", "refmatch torch k=", "--repeat", "1", "--out", str(tmp_path)])
    assert stopped.value.code == 1
    assert "1 refmatch row(s) failed: refmatch torch k=8 (their errors" in capsys.readouterr().err
    results = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert results["meta"]["complete"] and rows["refmatch torch k=1"]["agreement"] == 1.0
    assert "illegal memory access" in rows["refmatch torch k=8"].get("error", rows["refmatch torch k=8"].get("skipped"))


def test_a_peer_asked_for_more_neighbours_than_the_bank_holds_is_skipped_not_scored_wrong(tmp_path):
    """FAISS pads a list past M with -1: its k = 8 row on 4 references read 0 % agreement."""
    pytest.importorskip("faiss")
    bench.main(["--sizes", "16x4x8", "--only", "faiss", "--repeat", "1", "--out", str(tmp_path)])
    rows = {row["method"]: row for row in json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]}
    assert rows["faiss-cpu IndexFlatIP k=8"]["skipped"] == "k must satisfy 1 <= k <= M=4, got k=8"
    assert rows["faiss-cpu IndexFlatIP k=1"]["agreement"] == 1.0
