"""Checkpoint files as a cluster leaves them: a flipped bit, zeros after a crash, a file from
elsewhere that would run code when unpickled. Each is refused by name before any use."""
import io
import os
import zipfile

import pytest
import torch

pytest.importorskip("yaml")
from refmatch.recipes.checkpoint import load, save_atomic  # noqa: E402

STATE = {"config": {"seed": 0}, "teacher": {"head.weight": torch.arange(64.0).reshape(8, 8)}}


def test_a_flipped_bit_is_refused_by_its_checksum(tmp_path):
    """torch.load took a checkpoint whose weight had a flipped mantissa bit, and the resume went on
    with 0.417 for 0.479; the zip's CRC names the record."""
    path = tmp_path / "best.pt"
    save_atomic(STATE, path)
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    name_length, extra_length = (int.from_bytes(data[record.header_offset + at:][:2], "little") for at in (26, 28))
    at = record.header_offset + 30 + name_length + extra_length + 5  # in the stored bytes (local header, padded)
    data[at] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{path} is damaged: its record .*data/0 fails its checksum"):
        load(path)


def test_checkpoints_saved_without_checksums_load(tmp_path):
    """torch.serialization.set_crc32_options(False) (faster saves) writes CRC 0: each record failed
    the check, and the run itself stopped at its test, reading best.pt."""
    options = pytest.importorskip("torch.serialization")
    if not hasattr(options, "set_crc32_options"):
        pytest.skip("torch < 2.5 always writes checksums")
    options.set_crc32_options(False)
    try:
        save_atomic(STATE, tmp_path / "best.pt")
    finally:
        options.set_crc32_options(True)
    assert torch.equal(load(tmp_path / "best.pt")["teacher"]["head.weight"], STATE["teacher"]["head.weight"])


def test_zeros_and_foreign_pickles_are_named_not_tracebacks(tmp_path):
    zeros = tmp_path / "latest.pt"  # what delayed allocation leaves after a node crash
    save_atomic(STATE, zeros)
    zeros.write_bytes(bytes(zeros.stat().st_size))
    with pytest.raises(ValueError, match=rf"{zeros} is not a readable checkpoint .*: \w+Error"):
        load(zeros)
    foreign = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"config": {}, "teacher": {}, "payload": Payload(str(marker))}, buffer)
    foreign.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=rf"{foreign} is not a refmatch checkpoint: it holds Python objects"):
        load(foreign)
    assert not marker.exists(), "unpickling ran the file's code"


class Payload:
    """Unpickling it creates a file: what a hostile checkpoint could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_an_atomic_write_syncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    """Only the file was fsynced: a power loss after the rename could leave the old name."""
    import stat

    from refmatch.atomic_file import write_text_atomic

    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: synced.append(os.fstat(descriptor).st_mode) or
                        fsync(descriptor))
    write_text_atomic(tmp_path / "metrics.json", "{}")
    assert [stat.S_ISDIR(mode) for mode in synced] == [False, True]
