"""Where benchmark results go: the machine and commit they measured, a results name no run has
taken, and the rows written as <stem>.json and <stem>.md. Shared by ``refmatch bench`` and the
scripts under bench/, so every results file has one layout: ``{"meta": {...}, "rows": [...]}``.
"""
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch

import refmatch
from refmatch.atomic_file import write_text_atomic


def git_commit():
    """Short commit of the checkout refmatch is imported from (not the working directory's),
    with "+dirty" when it has uncommitted changes; "unknown" for an installed package."""
    checkout = Path(refmatch.__file__).resolve().parent.parent
    git = ["git", "--no-optional-locks", "-C", str(checkout)]  # a status must not block a git in progress
    try:  # a hung git (a stale network mount) must not hold a run's start: 10 s a call at most
        top, commit = subprocess.run([*git, "rev-parse", "--show-toplevel", "--short", "HEAD"],
                                     capture_output=True, text=True, check=True, timeout=10).stdout.splitlines()
        if Path(top).resolve() != checkout:  # site-packages inside some other repository: not refmatch's commit
            return "unknown"
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def fresh_stem(stem):
    """``stem``, or ``stem-2``, ``stem-3`` ...: the first that names no results file yet, claimed
    by creating its (empty) .json, so a second run of a day, one started at the same moment, or a
    run inside a checkout never replaces committed or earlier results."""
    candidate, number = stem, 1
    while True:
        if not any(candidate.with_suffix(suffix).exists() for suffix in (".md", ".png")):
            try:
                candidate.with_suffix(".json").open("x").close()
                return candidate
            except FileExistsError:
                pass
        number += 1
        candidate = stem.with_name(f"{stem.name}-{number}")


def write_results(stem, meta, rows, table):
    """``{"meta": meta, "rows": rows}`` as <stem>.json and the markdown ``table`` as <stem>.md,
    each replaced atomically. Called after every row, so a killed run keeps what it measured."""
    write_text_atomic(stem.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    write_text_atomic(stem.with_suffix(".md"), table.rstrip("\n") + "\n")


INCOMPLETE = "**Incomplete:** the run stopped before its last row."  # under the command, until the last row


def cpu_model():
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine(device):
    """(file-name slug, description) of the device that runs the benchmark."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_model()} x{os.cpu_count()}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name.replace("(R)", "").replace("(TM)", "")).strip("-")
    return slug, name


def run_meta(device, argv, repeat, **extra):
    """What every results file records (bench/README.md), ``extra`` fields too; "complete" stays
    False until the last row, so the file of a stopped run says so."""
    from refmatch.backends.cpu_topk import screen_available

    return {"device": device, "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "date": date.today().isoformat(), "commit": git_commit(), "torch": torch.__version__,
            "refmatch": refmatch.__version__, "peers": peer_versions(),
            "argv": sys.argv[1:] if argv is None else list(argv), "repeat": repeat, "bf16_screen": screen_available(),
            "env": {key: value for key, value in os.environ.items()
                    if key.startswith(("REFMATCH_", "TRITON_", "OMP_"))},
            **extra, "complete": False}


def results_stem(out, machine_slug, kind, tag, day):
    """<out>/<machine>-<kind>[-<tag>]-<day>: a results file's name before ``fresh_stem`` claims it."""
    return out / "-".join([machine_slug, kind] + ([tag] if tag else []) + [day])


def peer_versions():
    """Installed versions of the peers, by distribution name."""
    from importlib import metadata

    versions = {}
    for dist in ("faiss-cpu", "faiss-gpu", "pykeops", "flash-kmeans", "triton"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def prepared_out_folder(parser, out):
    """``out``, made; argparse's error (exit status 2) where it cannot be written, before any
    timing (else found only when the first row is written). A results file's name (x.json) is
    refused: the run names its files itself, in that folder."""
    if out.suffix.lower() in (".json", ".md", ".png") and not out.is_dir():
        parser.error(f"--out {out}: --out is the results folder, where the run names its files by machine and "
                     f"date (--tag WORD adds a word): use --out {out.parent}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {out}: {error.strerror}")
    if not os.access(out, os.W_OK):
        parser.error(f"--out {out}: cannot write there")
    return out


class ResultsFile:
    """For the CPU scripts under bench/: one run's table (``meta`` from ``run_meta`` with "isas"
    and "timing"), printed and rewritten to <stem>.json and .md after every row, as ``refmatch
    bench`` writes them: the command above the table, marked incomplete until the block ends (the
    stem is claimed with the first row: a run refused before it leaves no file). Ctrl-C prints one
    line saying where the rows so far are and exits with status 130 instead of a traceback."""

    def __init__(self, prog, stem_wanted, meta, columns):
        self.prog, self.stem_wanted, self.meta, self.rows, self.stem = prog, stem_wanted, meta, [], None
        self.head = [f"Device: {meta['device']}; torch {meta['torch']}; bfloat16 screen: {meta['bf16_screen']}; "
                     f"fused top-k: {', '.join(meta['isas']) or 'none'}; commit {meta['commit']}; {meta['date']}; "
                     f"{meta['threads']} threads; {meta['timing']}", "",
                     f"Command: `{prog} {shlex.join(meta['argv'])}`", ""]
        self.lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def __enter__(self):
        return self

    def print_header(self):
        print("\n".join(self.head + self.lines), flush=True)

    def add(self, row, line):
        self.rows.append(row)
        self.lines.append(line)
        print(line, flush=True)
        self.stem = self.stem or fresh_stem(self.stem_wanted)
        self._write()

    def _write(self):
        stopped = [] if self.meta["complete"] else [INCOMPLETE, ""]
        write_results(self.stem, self.meta, self.rows, "\n".join(self.head + stopped + self.lines))

    def __exit__(self, kind, error, traceback):
        if kind is None and self.stem is not None:
            self.meta["complete"] = True
            self._write()
            print(f"\nwrote {self.stem.resolve()}.json and .md")
        elif kind is None:
            print("\nno row was measured, no file written")
        elif issubclass(kind, KeyboardInterrupt):
            where = (f"the rows so far ({len(self.rows)}) are in {self.stem.resolve()}.json and .md "
                     "(marked incomplete)" if self.stem else "no row was measured, no file written")
            print(f"{self.prog}: interrupted; {where}", file=sys.stderr)
            raise SystemExit(130) from None
