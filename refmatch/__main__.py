"""The ``refmatch`` command line: ``refmatch <command> [options]``."""
import os
import signal
import sys

from .recipes.interrupts import SIGNALS, note_stop, noted_stop, take_noted_stop

COMMANDS = {
    "train": ("refmatch.recipes.cli:train_main", "train a U-Net: supervised, meanteacher-pl or refmatch"),
    "evaluate": ("refmatch.recipes.cli:evaluate_main", "Dice, IoU and HD95 of a checkpoint on a dataset"),
    "pseudo-label": ("refmatch.recipes.pseudo_label:pseudo_label_main", "write pseudo-label PNGs for a folder of images"),
    "compare-pseudo-labels": ("refmatch.recipes.compare_pseudo_labels:main",
                              "score pseudo-label settings of a run against hidden masks"),
    "demo": ("refmatch.demo:main", "pseudo-labels from a synthetic reference bank"),
    "report": ("refmatch.recipes.report:main", "Markdown tables of finished runs, or by seed"),
    "bench": ("refmatch.bench:main", "benchmark match against the dense GEMM and peers"),
    "info": ("refmatch.info:main", "versions, compiled archs and backend availability"),
}
# What a user's mistake (bad key, missing file, occupied or unwritable folder) raises in the commands.
USER_ERRORS = (ValueError, OSError)


class Terminated(BaseException):
    """SIGTERM, SIGUSR1 or SIGHUP (its name the argument) outside a training loop (which catches
    them to save first): a BaseException, so that no ``except Exception`` on the way swallows
    it, and atomic writes drop their temporary files."""


def _raise_terminated(number, frame):
    name = signal.Signals(number).name
    note_stop(name)  # should the exception be lost (recipes.interrupts)
    raise Terminated(name)


def _raise_interrupted(number, frame):
    note_stop("SIGINT")
    raise KeyboardInterrupt


def print_usage(file):
    print("usage: refmatch <command> [options]\n\ncommands:", file=file)
    for name, (_, summary) in COMMANDS.items():
        print(f"  {name:<22} {summary}", file=file)


def run(argv):
    """Run ``refmatch <argv>``; the command's exceptions pass through. Returns the exit status."""
    if argv and argv[0] in ("-h", "--help"):
        print_usage(sys.stdout)
        return 0
    if not argv:  # a script that forgot its command must not pass as a success
        print("refmatch: missing command\n", file=sys.stderr)
        print_usage(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        print(f"refmatch: unknown command {argv[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + "\n",
              file=sys.stderr)
        print_usage(sys.stderr)
        return 2
    import importlib

    module_name, function = COMMANDS[argv[0]][0].split(":")
    status = getattr(importlib.import_module(module_name), function)(argv[1:])
    return status if type(status) is int else 0  # report's 1: a table that left runs out


def one_line(error):
    """The error's message; one raised in a DataLoader worker process carries that worker's
    traceback in its message, so only the worker's own last line is kept."""
    text = str(error)
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv=None):
    """Entry point of the ``refmatch`` script and ``python -m refmatch``. Without ``argv``
    (the process's arguments) a user error prints one line, ``refmatch <command>: error: ...``,
    and returns 2 (``REFMATCH_DEBUG=1``: the traceback instead); Ctrl-C prints
    ``interrupted`` and returns 130, SIGTERM outside the training loop ``terminated (SIGTERM)``
    and 143 (SIGUSR1 and SIGHUP likewise, 138 and 129). Called with a list, as from Python, it is
    ``run(argv)``: exceptions reach the caller."""
    if argv is not None:
        return run(argv)
    return command_line(sys.argv[1:])


def command_line(argv):
    """``run(argv)`` as the ``refmatch`` script runs it: user errors and Ctrl-C as in ``main``;
    SIGTERM, SIGUSR1 or SIGHUP outside the training loop (data setup, evaluation, a benchmark)
    prints ``terminated (SIGTERM)`` (its name) and returns 128 + the signal instead of ending the
    process without a word."""
    import warnings

    take_noted_stop()  # an earlier command's, run in this process
    # A signal the process was started ignoring (SIGINT under `cmd &` in a script) stays ignored.
    installed = {number: signal.signal(number, _raise_interrupted if number == signal.SIGINT else
                                       _raise_terminated)
                 for number in SIGNALS if signal.getsignal(number) is not signal.SIG_IGN}
    python_format = warnings.formatwarning
    # One line per warning, named by the command, not Python's file:line and source line.
    warnings.formatwarning = lambda message, *_, **__: f"refmatch {argv[0] if argv else ''}: warning: {message}\n"
    try:
        return run(argv)
    except Terminated as stopped:
        print(f"refmatch {argv[0]}: terminated ({stopped})", file=sys.stderr)
        return 128 + signal.Signals[str(stopped)]
    except BrokenPipeError:  # output piped into head, say: stop quietly (before OSError below)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as error:
        if os.environ.get("REFMATCH_DEBUG") == "1":
            raise
        print(f"refmatch {argv[0]}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refmatch {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as error:
        # A DataLoader worker the same Ctrl-C or SIGTERM stopped first: the stop, not a crash.
        stop = noted_stop()
        if stop is None or "DataLoader worker" not in str(error) or os.environ.get("REFMATCH_DEBUG") == "1":
            raise
        print(f"refmatch {argv[0]}: " + ("interrupted" if stop == "SIGINT" else f"terminated ({stop})"),
              file=sys.stderr)
        return 128 + signal.Signals[stop]
    finally:
        for number, previous in installed.items():  # None: set outside Python
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        take_noted_stop()
        warnings.formatwarning = python_format


if __name__ == "__main__":
    sys.exit(main())
