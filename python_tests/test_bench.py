"""``refmatch bench`` end to end on a tiny CPU size: files, ceilings, filters, plot."""
import json

import pytest

from refmatch import bench
from refmatch.backends import cpu_topk
from refmatch.bench_files import fresh_stem


def test_writes_rows_ceilings_and_plot(tmp_path, monkeypatch):
    written = []
    original = bench.write_results
    monkeypatch.setattr(bench, "write_results", lambda stem, meta, rows, table: (written.append(len(rows)),
                                                                                 original(stem, meta, rows, table)))
    bench.main(["--sizes", "64x512x16", "64x1024x16", "--only", "torch", "--exclude", "classwise", "k=8",
                "--repeat", "1", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    rows = results["rows"]
    assert written == list(range(1, len(rows) + 1)) + [len(rows)], "rewritten after every row, and at the end"
    assert results["meta"]["complete"]
    names = [row["method"] for row in rows if row["m"] == 512]
    assert names[:2] == ["gemm torch.mm 2048^3 (ceiling)", "gemm torch.mm this shape"]
    assert "refmatch torch k=1" in names and not any("classwise" in n or "k=8" in n for n in names)
    assert not any("faiss" in n or "keops" in n for n in names), "--only keeps the ceilings and matches"
    timed = [row for row in rows if "tflops" in row]
    ceiling = {row["m"]: max(r["tflops"] for r in timed if r["m"] == row["m"] and r["metric"] == "-")
               for row in timed}
    for row in timed:
        assert row["ratio_to_gemm"] == pytest.approx(row["tflops"] / ceiling[row["m"]])
        assert row["metric"] == "-" or row["agreement"] == 1.0
    assert json_path.with_suffix(".md").read_text().count("| 64 |") == len(rows)
    pytest.importorskip("matplotlib")
    assert json_path.with_suffix(".png").stat().st_size > 0


def test_one_size_plots_dots(tmp_path):
    pytest.importorskip("matplotlib")
    from refmatch.bench_plot import plot

    rows = [{"method": "gemm torch.mm 8192^3 (ceiling)", "metric": "-", "n": 8, "m": 16, "d": 4, "dtype": "bfloat16",
             "tflops": 700.0},
            {"method": "refmatch triton k=1", "metric": "dot", "n": 8, "m": 16, "d": 4, "dtype": "bfloat16",
             "tflops": 300.0},
            {"method": "keops", "metric": "dot", "n": 8, "m": 16, "d": 4, "dtype": "bfloat16", "skipped": "crashed"}]
    assert plot(rows, tmp_path / "one.png").stat().st_size > 0


def test_a_second_run_of_the_day_keeps_the_first(tmp_path):
    """Same machine, dtype and date: the second run writes <stem>-2 instead of replacing the first."""
    arguments = ["--sizes", "32x256x8", "--only", "refmatch torch k=1", "--repeat", "1", "--out", str(tmp_path)]
    bench.main(arguments)
    (first,) = tmp_path.glob("*.json")
    before = first.read_text()
    bench.main(arguments)
    assert first.read_text() == before
    assert first.with_name(first.stem + "-2.json").exists()
    # A name is claimed when chosen, so two runs starting together write apart.
    stem = tmp_path / "race"
    assert fresh_stem(stem) == stem and fresh_stem(stem) == tmp_path / "race-2"


@pytest.mark.parametrize("arguments, message", [
    (["--sizes", "10x10"], "a size is NxMxD"), (["--sizes", "8x0x4"], "a size is NxMxD"),
    (["--repeat", "0"], "expected an integer >= 1, got '0'"), (["--tag", "a/b"], "a tag takes"),
    (["--fits-gib", "nan"], "expected a positive number"), (["--fits-gib", "-1"], "expected a positive number")])
def test_bad_arguments_are_named_before_any_timing(arguments, message, capsys):
    with pytest.raises(SystemExit):
        bench.main(arguments)
    assert message in capsys.readouterr().err


def test_only_matching_nothing_is_an_error_before_any_timing(tmp_path):
    with pytest.raises(ValueError, match="--only nosuchmethod leaves no method that runs here but the GEMM "
                                         "ceilings; methods here: naive .*refmatch torch k=1, refmatch torch k=8"):
        bench.main(["--sizes", "32x256x8", "--only", "nosuchmethod", "--repeat", "1", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir()), "nothing timed, nothing written"


def test_tags_hold_no_dots(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--tag", "v1.2"])
    assert "a tag takes letters, digits" in capsys.readouterr().err


def test_every_device_has_a_preset():
    assert set(bench.PRESETS) == {"cpu", "cuda"}


def test_an_excluded_peer_is_not_even_imported(monkeypatch):
    """--exclude keops skips the KeOps group before its import (on a GPU that import builds a binder)."""
    import torch

    from refmatch import bench_peers

    built = []
    monkeypatch.setitem(bench_peers.PEER_GROUPS, "keops", lambda *args: built.append(1) or [])
    tiny = torch.zeros(2, 8)
    bench_peers.all_methods(tiny, tiny, 0, exclude=["KeOps"])  # as the docs spell it
    assert built == []
    assert bench_peers.wanted("faiss-cpu IndexFlatIP k=1", ["FAISS"], None)
    assert not bench_peers.wanted("faiss-cpu IndexFlatIP k=1", None, ["indexflatip"])
    bench_peers.all_methods(tiny, tiny, 0, exclude=["IndexFlatIP"])
    assert built == [1], "a word naming single methods filters them later, not the group"


def test_a_failing_method_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    from refmatch import bench_peers

    methods = bench_peers.all_methods

    def with_a_broken_peer(query, reference, fits_bytes, only=None, exclude=(), considered=None):
        def broken():
            raise RuntimeError("out of memory\n  somewhere deep")
        return [bench_peers.Method("broken peer", "dot", 1, broken, 1.0)] + methods(query, reference, fits_bytes,
                                                                                     only, exclude, considered)
    monkeypatch.setattr(bench, "all_methods", with_a_broken_peer)
    bench.main(["--sizes", "32x256x8", "--only", "broken", "refmatch torch k=1", "--repeat", "2",
                "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert rows["broken peer"]["error"] == "RuntimeError: out of memory somewhere deep"
    assert rows["refmatch torch k=1"]["agreement"] == 1.0 and rows["refmatch torch k=1"]["runs"] == 2
    assert results["meta"]["repeat"] == 2 and "--only" in results["meta"]["argv"] and "bf16_screen" in results["meta"]


def test_a_backend_whose_probe_fails_is_a_skipped_row_and_filtered_ones_are_not_probed(monkeypatch):
    """Only a ValueError is a backend declining; any other error in the 1 x 8 probe (a compile
    or CUDA error) skips that row with the error instead of ending the run; methods --only and
    --exclude leave out are never called."""
    import torch

    from refmatch import bench_peers

    calls, match = [], bench_peers.refmatch.match

    def probed(query, reference, *args, backend="auto", **kwargs):
        calls.append((backend, kwargs.get("k", 1)))
        if backend == "torch" and kwargs.get("k", 1) == 8:
            raise RuntimeError("a compile error\n  deep inside")
        return match(query, reference, *args, backend=backend, **kwargs)
    monkeypatch.setattr(bench_peers.refmatch, "match", probed)
    tiny = torch.randn(16, 8)
    methods = {m.name: m for m in bench_peers.all_methods(tiny, tiny, 1 << 20, only=["refmatch torch"],
                                                         exclude=["classwise"]) if m.name.startswith("refmatch")}
    assert set(methods) == {"refmatch torch k=1", "refmatch torch k=8"}
    assert methods["refmatch torch k=8"].skip == "its 1 x 8 probe failed: RuntimeError: a compile error deep inside"
    assert {backend for backend, _ in calls} == {"torch"}


def test_only_methods_that_cannot_run_here_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the cuda rows run here")
    with pytest.raises(ValueError, match="--only cuda leaves no method that runs here but the GEMM ceilings; "
                                         "methods here: .*; not on this machine: refmatch cuda k=1, refmatch cuda k=8"):
        bench.main(["--sizes", "32x256x8", "--only", "cuda", "--repeat", "1", "--out", str(tmp_path)])


def test_cuda_kernel_rows_on_cpu_tensors_say_they_need_a_device(monkeypatch):
    """On a CPU run the wgmma rows said 'needs sm_90 and an sm_90a build', as if the card were the reason."""
    import torch

    from refmatch.bench_peers import _cuda_variant_methods

    monkeypatch.delenv("REFMATCH_CUDA_HOPPER", raising=False)  # =0 gives its own reason first

    methods = _cuda_variant_methods(torch.randn(4, 8), torch.randn(16, 8), flops=1.0)
    assert methods and all(method.skip == "needs a CUDA device" for method in methods)


def test_top_k_and_classwise_rows_are_timed_against_k1_interleaved(tmp_path, monkeypatch):
    """Each top-8 or class-wise run follows one of the backend's k = 1 dot, and "vs k=1" is the
    median of the runs' ratios (not the ratio of the medians), so a host whose speed drifts
    moves both alike; the JSON keeps the k = 1 runs' median."""
    from refmatch import bench_timing

    calls, baseline_seconds, run_seconds = [], iter([0.1, 0.4, 0.2] * 2), iter([0.3, 0.2, 0.1] * 2)

    def fake_seconds(fn, device):  # after the ceilings: ratios 3, 0.5, 0.5 per row
        baseline = getattr(fn, "__name__", "") == "search"
        calls.append(baseline)
        if len(calls) <= 6:
            return 0.01
        return next(baseline_seconds) if baseline else next(run_seconds)
    monkeypatch.setattr(bench_timing, "_seconds", fake_seconds)
    bench.main(["--sizes", "32x256x8", "--only", "torch k=8", "torch classwise", "--repeat", "3",
                "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("*.json")
    rows = [row for row in json.loads(json_path.read_text())["rows"] if "seconds" in row and row["metric"] != "-"]
    assert [row["method"] for row in rows] == ["refmatch torch k=8", "refmatch torch classwise C=4"]
    for row in rows:  # medians: 0.2 s against 0.2 s, yet each run's ratio is 3, 0.5 or 0.5
        assert row["runs"] == 3 and row["ratio_to_k1"] == pytest.approx(0.5) and row["k1_seconds"] == 0.2
    assert calls == [False] * 6 + [True, False] * 6, "the ceilings' 3 runs each, then each run after a k = 1 run"
    table = json_path.with_suffix(".md").read_text()
    assert "| vs k=1 |" in table and table.count("| 0.50 of 200.0 ms |") == 2  # the paired runs' own k = 1 time


def test_a_peer_that_kills_its_probe_process_is_a_skipped_row(tmp_path, monkeypatch):
    """KeOps runs once in a child process before its rows: a segmentation fault there (KeOps 2.3
    on CUDA 13) skips its rows with the signal and the child's last line (stdout or stderr), and
    the run goes on; the probe runs only when a KeOps row is wanted, after the rows before it."""
    import torch

    from refmatch import bench_keops

    crash = bench_keops.crash_reason("import os, signal; print('Generating code for ArgMin'); "
                                     "os.kill(os.getpid(), signal.SIGSEGV)", timeout=60)
    assert crash == "it killed a probe process (SIGSEGV; last line: Generating code for ArgMin)"
    assert bench_keops.crash_reason("import os; os.kill(os.getpid(), 40)", timeout=60).startswith(
        "it killed a probe process (signal 40;")
    assert bench_keops.crash_reason("import sys; sys.stdout.buffer.write(b'\\xff'); raise ValueError('no nvrtc')",
                                    timeout=60) == "its probe in a child process failed (ValueError: no nvrtc)"
    assert bench_keops.crash_reason("import refmatch.bench_keops", timeout=60) is None, "this process's import path"
    assert "ran past 1 s" in bench_keops.crash_reason("import time; time.sleep(30)", timeout=1)

    find_spec = bench_keops.importlib.util.find_spec  # as if pykeops were installed: its rows carry the reason
    monkeypatch.setattr(bench_keops.importlib.util, "find_spec",
                        lambda name, *args: object() if name == "pykeops" else find_spec(name, *args))
    probes = []
    monkeypatch.setattr(bench_keops, "crash_reason", lambda statement, timeout: probes.append(statement) or
                        "it killed a probe process (SIGSEGV)")
    tiny = torch.zeros(2, 8)
    assert bench_keops.keops_rows(tiny, tiny, lambda name: "keops" not in name) == [] and probes == []
    bench.main(["--sizes", "32x256x8", "--only", "keops", "refmatch torch k=1", "--repeat", "1",
                "--out", str(tmp_path)])
    rows = {row["method"]: row for row in json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]}
    assert [rows[name].get("skipped") for name in bench_keops.FORMULAS] == ["it killed a probe process (SIGSEGV)"] * 2
    assert rows["refmatch torch k=1"]["agreement"] == 1.0 and len(probes) == 1, "one probe for both rows"


@pytest.mark.skipif(not cpu_topk.screen_available(), reason="no bfloat16 screen on this CPU or build")
def test_screening_benchmark_writes_a_row_per_feature_set(tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "bench_screening.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--size", "64x600x8", "--metrics", "l2", "--k", "2",
                                      "--repeat", "1", "--out", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    (result,) = tmp_path.glob("*-screening-*.json")
    results = json.loads(result.read_text())
    assert results["meta"]["timing"] == "median of 1 runs after a warm-up"
    assert [row["features"] for row in results["rows"]] == ["random", "clusters noise=1", "clusters noise=0.3",
                                                            "clusters noise=0.1"]
    assert all(row["walk_agreement"] == 1.0 and row["screen_agreement"] == 1.0 for row in results["rows"])
    assert result.with_suffix(".md").read_text().count("| l2 | 2 |") == 4


def test_an_installed_package_inside_another_repository_has_no_commit(tmp_path, monkeypatch):
    """A venv inside the user's own project: the results named that project's HEAD as refmatch's."""
    import subprocess

    import refmatch
    from refmatch.bench_files import git_commit

    package = tmp_path / ".venv" / "site-packages" / "refmatch"
    package.mkdir(parents=True)
    for command in (["init", "-q"], ["-c", "user.name=u", "-c", "user.email=u@e", "commit", "-q", "--allow-empty",
                                     "-m", "theirs"]):
        subprocess.run(["git", "-C", str(tmp_path), *command], check=True)
    monkeypatch.setattr(refmatch, "__file__", str(package / "__init__.py"))
    assert git_commit() == "unknown"


def test_line_panels_name_the_measured_sizes_and_series_differ_beyond_colour(tmp_path, monkeypatch):
    """M's axis showed one tick ("10^5") for 16K, 64K and 256K, and twelve series differed by colour
    alone; a results file's picture can be drawn again from it."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot

    from refmatch import bench_plot

    rows = [{"method": method, "metric": metric, "n": 8, "m": m, "d": 4, "dtype": "float32", "tflops": 1.0 + m / 1e5}
            for method, metric in (("refmatch torch k=1", "dot"), ("refmatch torch k=1", "l2"), ("faiss-cpu k=1", "l2"))
            for m in (16384, 65536, 262144)]
    axes = []
    monkeypatch.setattr(matplotlib.pyplot, "close", lambda figure: axes.extend(figure.axes))
    results = tmp_path / "run.json"
    results.write_text(json.dumps({"meta": {"device": "a CPU", "commit": "abc1234"}, "rows": rows}))
    assert bench_plot.replot(results) == results.with_suffix(".png") and results.with_suffix(".png").stat().st_size
    (axis,) = axes
    assert [label.get_text() for label in axis.get_xticklabels()] == ["16K", "64K", "256K"]
    styles = {(line.get_marker(), line.get_linestyle()) for line in axis.get_lines()}
    assert styles == {("s", "-"), ("^", "-"), ("^", "-.")}
    assert axis.figure._suptitle.get_text() == "a CPU; commit abc1234"
    other = tmp_path / "cpu-topk.json"  # another script's results: named, not a KeyError
    other.write_text(json.dumps({"meta": {}, "rows": [{"k": 8}]}))
    with pytest.raises(ValueError, match="not a results file of refmatch bench"):
        bench_plot.replot(other)
    for argv in ([str(other)], [], ["--help"]):  # --help was read as a file name; no file printed nothing
        with pytest.raises(SystemExit) as exited:
            bench_plot.main(argv)
        assert exited.value.code == (0 if argv == ["--help"] else 2)
