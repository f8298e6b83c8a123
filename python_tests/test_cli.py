"""The command line: info, the embedded demo, unknown commands and user errors."""
import importlib.util
import subprocess
import time
import sys

import pytest
import torch

from refmatch import demo, info
from refmatch.__main__ import main


def test_info_prints_versions_and_backend_table():
    out = subprocess.run([sys.executable, "-m", "refmatch.info"], capture_output=True, text=True, check=True).stdout
    assert "refmatch 0." in out and "torch" in out and "_C" in out
    for name in ("cuda", "triton", "torch"):
        assert any(line.startswith(name) for line in out.splitlines())


def test_demo_pseudo_labels_beat_class_means():
    figures = demo.run(num_labeled=4, num_unlabeled=4, size=32, dim=32)
    assert figures["accuracy"] > figures["class_mean_accuracy"] + 0.1
    assert figures["accuracy"] > 0.7


def test_demo_baseline_ignores_classes_the_labelled_pixels_lack():
    """12 classes, 1 labelled image: class 5 has no pixel in the bank, and its NaN mean won every
    argmax of the baseline (2.3 % accuracy, which overstated matching's lead)."""
    figures = demo.run(num_labeled=1, num_unlabeled=2, num_classes=12, size=16)
    assert figures["class_mean_accuracy"] > 0.15


@pytest.mark.parametrize("arguments, message", [
    (["--size", "1"], "argument --size: expected an integer >= 2, got '1'"),
    (["--unlabeled", "0"], "argument --unlabeled: expected an integer >= 1, got '0'"),
    (["--classes", "x"], "argument --classes: expected an integer >= 1, got 'x'"),
    (["--device", "meta"], "argument --device: expected cpu, cuda or cuda:N, got 'meta'"),
])
def test_demo_refuses_bad_flags_with_its_usage(capsys, arguments, message):
    with pytest.raises(SystemExit) as stopped:
        demo.main(arguments)
    assert stopped.value.code == 2 and capsys.readouterr().err.endswith(f"refmatch demo: error: {message}\n")


def test_demo_refuses_sizes_beyond_the_machines_memory():
    """A 10 TB allocation ended in a RuntimeError traceback (a CLI review)."""
    with pytest.raises(ValueError, match=r"make about [\d,]+ GiB of synthetic features, more than this machine's"):
        demo.main(["--dim", "100000", "--size", "512", "--unlabeled", "100"])


def test_missing_command_prints_the_usage_and_fails(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("refmatch: missing command\n")
    assert "pseudo-label" in captured.err
    assert main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: refmatch <command>")


def test_unknown_command_is_named_before_the_usage(capsys):
    assert main(["frobnicate"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("refmatch: unknown command 'frobnicate'\n") and "demo" in captured.err
    assert main(["pseudo-labels"]) == 2  # a near miss gets a suggestion
    assert capsys.readouterr().err.startswith("refmatch: unknown command 'pseudo-labels' (did you mean 'pseudo-label'?)")


@pytest.mark.parametrize("arguments, message", [
    (["pl_mood=soft"], "refmatch train: error: unknown config key(s) 'pl_mood' (did you mean 'pl_mode'?)"),
    (["--config", "missing.yaml"], "refmatch train: error: config not found: missing.yaml"),
    (["--config", "BAD"], "refmatch train: error: BAD is not valid YAML at line 2, column 4: expected ',' or ']'"),
    (["--config", "LIST"], "refmatch train: error: LIST must hold key: value lines, got a list"),
    (["steps=[1"], "refmatch train: error: override 'steps=[1' is not valid YAML at line 1, column 3"),
    # 349 bytes of nested aliases printed as 520 MB in the error naming the value
    (["classes=[&a [x, x], *a]"], "refmatch train: error: override 'classes=[&a [x, x], *a]' is valid YAML, but "
                                  "at line 1, column 13: refmatch takes no YAML aliases (*name): write the value out, "
                                  "or use extends:"),
    (["steps="], "refmatch train: error: steps must be int, got None"),
    (["lr=null"], "refmatch train: error: lr must be float, got None"),
    (["tap_size=0"], "refmatch train: error: tap_size must be >= 1, got 0"),
    (["seed=-1"], "refmatch train: error: seed must be >= 0, got -1"),
    (["ema_decay=1"], "refmatch train: error: ema_decay must be < 1, got 1.0"),  # never reached by the warm-up
    (["lr=.nan"], "refmatch train: error: lr must be > 0 and finite, got nan"),
    (["lr=true"], "refmatch train: error: lr must be float, got True"),
    (["lr=1e-3x"], "refmatch train: error: lr must be float, got '1e-3x'"),
    (["tap_layers=[nope]"], "refmatch train: error: tap_layers must be a non-empty list of decoder stages of the "
                            "U-Net at depth=4 (decoder.up3, decoder.up2, decoder.up1), got ['nope']"),
    # Layers of the U-Net that are not decoder stages have no channel count for the bank.
    (["tap_layers=[encoder.3]"], "refmatch train: error: tap_layers must be a non-empty list of decoder stages"),
    (["tap_layers=[decoder.up1.conv]"], "refmatch train: error: tap_layers must be a non-empty list of decoder"),
    (["tap_layers=[]"], "refmatch train: error: tap_layers must be a non-empty list of decoder stages"),
    (["val_fraction=0.6", "test_fraction=0.5"], "refmatch train: error: val_fraction + test_fraction must be < 1"),
    (["labeled_fraction=1.5"], "refmatch train: error: labeled_fraction must be in (0, 1] (num_labeled=0 takes it)"),
    (["device=foo"], "refmatch train: error: device must be auto, cpu, cuda or cuda:N, got 'foo'"),
    # torch parses these, but the run would fail at its end (cpu:0) or at once (meta, mps)
    (["device=cpu:0"], "refmatch train: error: device must be auto, cpu, cuda or cuda:N, got 'cpu:0'"),
    (["device=meta"], "refmatch train: error: device must be auto, cpu, cuda or cuda:N, got 'meta'"),
    (["val_fraction=0"], "refmatch train: error: val_fraction must be > 0: best.pt is the step with the best"),
    (["depth=7", "image_size=64", "tap_size=64"],
     "refmatch train: error: depth=7 is too deep for image_size=64: the U-Net's deepest stage would be 1x1; use "
     "depth <= 6"),
    (["--out", "/dev/null/run"], "refmatch train: error: --out /dev/null/run: /dev/null is not a folder"),
    (["--out", "DAMAGED", "--resume"], "refmatch train: error: DAMAGED/latest.pt is not a readable checkpoint"),
])
def test_user_errors_print_one_line_from_the_command_line(monkeypatch, capsys, tmp_path, arguments, message):
    """Caught before any data loads: the run folder stays empty."""
    (tmp_path / "BAD").write_text("steps: [1\nfoo: : :\n")
    (tmp_path / "LIST").write_text("- a\n- b\n")
    (tmp_path / "DAMAGED").mkdir()
    (tmp_path / "DAMAGED" / "latest.pt").write_text("not a checkpoint")
    arguments = [str(tmp_path / word) if word in ("BAD", "LIST", "DAMAGED") else word for word in arguments]
    message = message.replace("BAD", str(tmp_path / "BAD")).replace("LIST", str(tmp_path / "LIST"))
    message = message.replace("DAMAGED", str(tmp_path / "DAMAGED"))
    monkeypatch.delenv("REFMATCH_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["refmatch", "train", "--out", str(tmp_path / "run"), *arguments])
    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_an_error_in_a_data_loader_worker_prints_its_own_line(monkeypatch, capsys):
    """A worker process's exception arrives with the worker's traceback in its message: the
    command prints that error's own line, not the traceback."""
    import torch
    from torch.utils.data import DataLoader

    class Refusing(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise ValueError("masks/7.png holds label(s) 3, but the data has 3 classes")

    def command(arguments):
        list(DataLoader(Refusing(), num_workers=1))
    monkeypatch.setattr("refmatch.recipes.cli.evaluate_main", command)
    monkeypatch.delenv("REFMATCH_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["refmatch", "evaluate"])
    assert main() == 2
    assert capsys.readouterr().err == ("refmatch evaluate: error: masks/7.png holds label(s) 3, but the data has 3 "
                                       "classes\n")


@pytest.mark.parametrize("arguments, message", [
    (["train", "--out", "FILE"], "refmatch train: error: --out FILE: FILE is not a folder"),
    (["train", "--out", "FILE/run"], "refmatch train: error: --out FILE/run: FILE is not a folder"),
    (["pseudo-label", "--checkpoint", "c.pt", "--labeled", "l", "--unlabeled", "NOWHERE", "--out", "o"],
     "refmatch pseudo-label: error: --unlabeled NOWHERE: no such folder"),
    (["pseudo-label", "--checkpoint", "c.pt", "--labeled", "l", "--unlabeled", "NOWHERE", "--out", "FILE"],
     "refmatch pseudo-label: error: --out FILE: FILE is not a folder"),
    # checked before the evaluation, whose metrics it would keep (it failed after scoring every image)
    (["evaluate", "--checkpoint", "c.pt", "--data", "phantom", "--out", "FILE/m.json"],
     "refmatch evaluate: error: --out FILE/m.json: FILE is not a folder"),
    (["evaluate", "--checkpoint", "c.pt", "--data", "phantom", "--out", "NOWHERE/new/m.json"],  # folders made later
     "refmatch evaluate: error: checkpoint not found: c.pt"),
    (["train", "--out", "LINK"], "refmatch train: error: --out LINK: LINK is a broken symbolic link"),
    (["evaluate", "--checkpoint", "c.pt", "--data", "phantom", "--out", "FILE"],  # it replaced best.pt so
     "refmatch evaluate: error: --out FILE exists and is not an earlier output of evaluate (a checkpoint, or the "
     "run's metrics.json?): name a new file"),
])
def test_path_arguments_are_named_before_any_work(monkeypatch, capsys, tmp_path, arguments, message):
    """An --out that cannot be written, or an input folder that is not there, names its flag (the
    system's '[Errno 17] File exists' named neither), before a checkpoint is even read."""
    (tmp_path / "FILE").write_text("not a folder")
    (tmp_path / "LINK").symlink_to(tmp_path / "gone")
    names = {name: str(tmp_path / name) for name in ("FILE", "NOWHERE", "LINK")}
    replace = lambda text: names["FILE"].join(part.replace("NOWHERE", names["NOWHERE"]).replace(  # noqa: E731
        "LINK", names["LINK"]) for part in text.split("FILE"))
    monkeypatch.delenv("REFMATCH_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # relative paths land here
    monkeypatch.setattr(sys, "argv", ["refmatch", *map(replace, arguments)])
    assert main() == 2
    assert capsys.readouterr().err == replace(message) + "\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["FILE", "LINK"], "no folder or lock file left"


def test_a_malformed_flag_prints_the_usage_and_the_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["refmatch", "train", "--stop-at", "0"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    message = "refmatch train: error: argument --stop-at: expected an integer >= 1, got '0'\n"
    assert capsys.readouterr().err.endswith(message)


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "main", interrupted)
    monkeypatch.setattr(sys, "argv", ["refmatch", "demo"])
    assert main() == 130
    assert capsys.readouterr().err == "refmatch demo: interrupted\n"


def test_user_errors_raise_under_debug_and_when_called_from_python(monkeypatch, tmp_path):
    arguments = ["train", "--out", str(tmp_path / "run"), "pl_mood=soft"]
    with pytest.raises(ValueError, match="unknown config key"):
        main(arguments)
    monkeypatch.setenv("REFMATCH_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["refmatch", *arguments])
    with pytest.raises(ValueError, match="unknown config key"):
        main()


def triton_row(monkeypatch):
    """The triton row of the backend table of ``refmatch info``, its status asked afresh
    (statuses are cached)."""
    monkeypatch.setattr(importlib.import_module("refmatch.backends"), "_STATUS", {})
    table = info.report().split("\nbackend ")[1]
    return next(line for line in table.splitlines() if line.startswith("triton"))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_info_lists_triton_as_available_only_where_it_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    row = triton_row(monkeypatch)
    assert row.split()[1] == "no" and "no CUDA device" in row and "TRITON_INTERPRET=1" in row
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_row(monkeypatch).split()[1] == "yes"


def test_info_names_the_backend_auto_runs_on_each_gpu(monkeypatch):
    """One line per CUDA device: its capability and auto's backend, with the reason Triton
    declined a card before sm_80; on Hopper with the cuda backend built, cosine goes to cuda."""
    from refmatch.backends import cuda_backend, triton_backend

    monkeypatch.setattr(importlib.import_module("refmatch.backends"), "_STATUS", {"cuda": (True, "stand-in")})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: ["NVIDIA A100", "Tesla T4", "NVIDIA H100"][index])
    capabilities = [(8, 0), (7, 5), (9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device: capabilities[getattr(device, "index", device)])  # a device or an index
    monkeypatch.setattr(triton_backend.TritonBackend, "status", lambda self: (True, "stand-in"))
    on_hopper = {2}  # the devices the stand-in cuda backend runs on
    monkeypatch.setattr(cuda_backend.CudaBackend, "decline_reason",
                        lambda self, problem: None if problem.device.index in on_hopper else "not built here")
    monkeypatch.setattr(cuda_backend, "hopper_enabled", lambda device: device.index in on_hopper)
    lines = info.report().split("\n\n")[-1].splitlines()
    declined = "(triton: needs compute capability >= 8.0 (bf16 / tf32 tensor-core dots); cuda:1 has 7.5)"
    assert lines == [
        "cuda:0   NVIDIA A100, sm_80: backend='auto' runs bfloat16 cosine on triton, dot on triton, "
        "float32 (exact) cosine on triton",
        f"cuda:1   Tesla T4, sm_75: backend='auto' runs bfloat16 cosine on torch, dot on torch, "
        f"float32 (exact) cosine on torch {declined}",
        "cuda:2   NVIDIA H100, sm_90: backend='auto' runs bfloat16 cosine on cuda, dot on triton, "
        "float32 (exact) cosine on cuda"]


def test_sigterm_in_data_setup_prints_one_line_exits_143_and_frees_the_folder(monkeypatch, capsys, tmp_path):
    """Before the training loop (which saves first) SIGTERM ended the process without a word."""
    import os
    import signal

    from refmatch.recipes import train

    def preempted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    outside = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patched:
        patched.setattr(train, "prepare_data", preempted)
        patched.setattr(sys, "argv", ["refmatch", "train", "--out", str(tmp_path / "run"), "steps=2"])
        assert main() == 128 + signal.SIGTERM
    assert capsys.readouterr().err.endswith("refmatch train: terminated (SIGTERM)\n")
    assert signal.getsignal(signal.SIGTERM) is outside
    assert not (tmp_path / "run").exists(), "the folder it made, lock included, is gone: a rerun starts afresh"
    # An --overwrite stopped there puts the earlier run back (a killed process left it in .overwritten).
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "latest.pt").write_text("the earlier run")
    with monkeypatch.context() as patched:
        patched.setattr(train, "prepare_data", preempted)
        patched.setattr(sys, "argv", ["refmatch", "train", "--out", str(tmp_path / "old"), "--overwrite"])
        assert main() == 128 + signal.SIGTERM
    assert (tmp_path / "old" / "latest.pt").read_text() == "the earlier run"
    assert not (tmp_path / "old" / ".overwritten").exists()


def test_a_commands_warning_is_one_line_that_names_the_command(monkeypatch, capsys):
    """pseudo-label's and compare-pseudo-labels' warnings printed Python's file:line, category and
    source line; the command line prints one line, and gives Python's format back after."""
    import warnings

    def command(arguments):  # as Python's default showwarning prints (pytest records warnings instead)
        sys.stderr.write(warnings.formatwarning("class(es) heart appear in no mask of masks/", UserWarning,
                                                "/x/refmatch/__main__.py", 57, "getattr(importlib..."))
    monkeypatch.setattr("refmatch.recipes.pseudo_label.pseudo_label_main", command)
    monkeypatch.setattr(sys, "argv", ["refmatch", "pseudo-label"])
    python_format = warnings.formatwarning
    assert main() == 0
    assert capsys.readouterr().err == "refmatch pseudo-label: warning: class(es) heart appear in no mask of masks/\n"
    assert warnings.formatwarning is python_format
