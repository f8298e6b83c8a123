"""Files written atomically: a kill mid-write leaves the previous file intact."""
import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path, write, mode="wb"):
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder (a power loss could otherwise undo the rename). The file gets the
    permissions a plain ``open`` would give (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # temporaries()
    try:
        with os.fdopen(handle, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
        _sync_folder(path.parent)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from error  # a full disk: say which file
        raise


def temporaries(folder):
    """The temporary files that killed ``write_atomic`` calls left in ``folder`` (``.<name>.<random>.tmp``)."""
    return sorted(Path(folder).glob(".*.tmp"))


def write_text_atomic(path, text):
    """``Path(path).write_text(text)`` through ``write_atomic``."""
    write_atomic(path, lambda file: file.write(text), mode="w")


def save_png_atomic(image, path):
    """A PIL ``image`` to ``path`` as PNG through ``write_atomic``: a kill mid-write leaves no
    half picture under the final name."""
    write_atomic(path, lambda file: image.save(file, format="PNG"))


def _umask():
    mask = os.umask(0)  # reading it means setting it
    os.umask(mask)
    return mask


def _sync_folder(folder):
    """fsync ``folder``'s entries, where the file system allows it (some network ones refuse)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
