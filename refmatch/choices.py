"""The one check for an argument that names a choice (a metric, mode, policy, setting, device ...),
the one command-line type of a bounded integer, and the one way a message lists names.

A leaf module, importing nothing from refmatch, so that every layer (ops, masks, the recipes,
the backends' environment settings, the commands) can raise the same message."""
import argparse

import torch


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices`` (strings), else a ValueError naming ``name``,
    the choices and what arrived, e.g. ``metric must be one of 'cosine', 'dot', 'l2', got 'euclid'``.
    A value that is not a string (a tensor, a list) is refused the same way, never compared."""
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def at_least(minimum):
    """argparse type: an int >= ``minimum`` ("+3" and " 3" too, as int() reads them), else a
    usage error naming the value."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def is_cpu_or_cuda(text):
    """Whether ``text`` names a device the recipes run on: "cpu", "cuda" or "cuda:N"."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        return False
    return device.type == "cuda" or (device.type == "cpu" and device.index is None)


def listing(names, shown=5):
    """``names`` (strings) for a message: the first ``shown``, comma-separated, then "and N more"."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
