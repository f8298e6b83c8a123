"""Environment variables that choose a kernel or a path: read with a check, set for a block."""
import contextlib
import os

from ..choices import check_choice


def setting(name, choices):
    """Environment variable ``name``, one of ``choices`` (the first is the default), or a
    ValueError naming it; refused on every card alike."""
    return check_choice(name, os.environ.get(name, choices[0]), choices)


@contextlib.contextmanager
def environment(values):
    """``values`` ({name: str}) set in ``os.environ`` inside the block; each restored after
    (removed where it was unset), however the block ends."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
