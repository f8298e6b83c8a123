"""Where benchmark results go: the commit they measured, a results name no run has taken,
and the rows written as <stem>.json and <stem>.md. Shared by ``refmatch bench`` and the
scripts under bench/, so every results file has one layout: ``{"meta": {...}, "rows": [...]}``.
"""
import json
import subprocess
from pathlib import Path

import refmatch
from refmatch.atomic_file import write_text_atomic


def git_commit():
    """Short commit of the checkout refmatch is imported from (not the working directory's),
    with "+dirty" when it has uncommitted changes; "unknown" for an installed package."""
    checkout = Path(refmatch.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
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
