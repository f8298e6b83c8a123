"""Helpers for the tests of the CPU's bfloat16 screen (``torch_screening``)."""
from types import SimpleNamespace

import pytest

from refmatch.backends import screen_candidates, screen_tiles
from refmatch.backends.torch_backend import match_chunked


@pytest.fixture(autouse=True)
def screen_small_banks(monkeypatch):
    """Banks this small take candidates faster than the rate at which the screen stops
    (where the walk is cheaper anyway); the tests want them screened."""
    monkeypatch.setattr(screen_candidates, "MAX_HIT_RATE", float("inf"))


@pytest.fixture(autouse=True, params=["native tile pass", "torch tile pass"])
def tile_pass(request, monkeypatch):
    """Every screen test on both tile passes: refmatch._C's (where it was built) and torch's."""
    if request.param.startswith("native") and screen_tiles.native_screen() is None:
        pytest.skip("refmatch._C is not built")
    if request.param.startswith("torch"):
        monkeypatch.setattr(screen_tiles, "native_screen", lambda: None)


def screened_match(query, reference, metric, ignored=None, block_m=64, k=1, screen=True):
    """match_chunked with the screen forced on (tiles of 32 rows), as a result the oracle helpers read."""
    score, index = match_chunked(query.T[None, :, :, None], reference, ignored, k, metric,
                                 block_m=block_m, tile_bytes=32 * block_m * 2, screen=screen)
    return SimpleNamespace(score=score.squeeze(1), index=index.squeeze(1))
