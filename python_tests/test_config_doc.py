"""docs/config.md's table of config keys against TrainConfig: every key once, its default,
and which methods read it (UNUSED_BY), so that the page cannot drift from the code."""
import dataclasses
import re
from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="the train extra is not installed")

from refmatch.recipes.config import METHODS, UNUSED_BY, TrainConfig  # noqa: E402

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def documented_rows():
    """{key: (default, read by)} from the page's table rows."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`\w+`", cells[0]):
            assert cells[0][1:-1] not in rows, f"{cells[0]} has two rows"
            rows[cells[0][1:-1]] = (cells[1].strip("`"), cells[3])
    return rows


def as_written(value):
    """A default as the page writes it (YAML's spelling)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def test_every_config_key_has_one_row_with_its_default():
    rows = documented_rows()
    defaults = {field.name: getattr(TrainConfig(), field.name) for field in dataclasses.fields(TrainConfig)}
    assert sorted(rows) == sorted(defaults)
    for key, value in defaults.items():
        assert rows[key][0] == as_written(value), key


def test_read_by_names_the_methods_that_read_each_key():
    for key, (_, read_by) in documented_rows().items():
        readers = [method for method in METHODS if key not in UNUSED_BY[method]]
        expected = "all" if len(readers) == len(METHODS) else ", ".join(readers)
        assert read_by.split(" (")[0] == expected, key
