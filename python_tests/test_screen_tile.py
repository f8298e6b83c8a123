"""The screen's tile passes (``screen_tiles``): the C++ one (refmatch._C, screen_tile.h) against
the torch one, tile after tile; the state both read is float32 whatever torch's default dtype."""
import pytest
import torch

from refmatch.backends import screen_candidates, screen_tiles
from refmatch.backends.screen_tiles import chunk_maxima_bf16
from screened import screen_small_banks, screened_match  # noqa: F401 (an autouse fixture)

native = screen_tiles.native_screen()
needs_native = pytest.mark.skipif(native is None, reason="refmatch._C is not built")


def bf16_tile(rows, width, generator, zeros=0.1):
    """Scores with ties, both zeros and negatives, as a screened tile holds them."""
    tile = (torch.randn(rows, width, generator=generator) * 4).round() / 4
    signed_zero = torch.where(torch.rand(rows, width, generator=generator) < 0.5, 0.0, -0.0)
    return torch.where(torch.rand(rows, width, generator=generator) < zeros, signed_zero, tile).bfloat16()


def both_passes(k, rows, window, state=None):
    """Two ScreenCandidates with equal state, the second on the torch tile pass."""
    stores = [screen_candidates.ScreenCandidates(window.clone(), k) for _ in range(2)]
    if state is not None:
        for store in stores:
            state(store)
    return stores


def counting(monkeypatch):
    """Count the C++ pass's calls from ScreenCandidates.offer: [calls]."""
    calls = [0]

    def counted(*args):
        calls[0] += 1
        return native(*args)
    monkeypatch.setattr(screen_tiles, "native_screen", lambda: counted)
    return calls


@needs_native
@pytest.mark.parametrize("k, width", [(1, 96), (1, 7), (8, 128), (8, 100), (3, 2), (16, 513)])
def test_tile_after_tile_the_same_as_the_torch_pass(k, width, monkeypatch):
    generator = torch.Generator().manual_seed(k * 1000 + width)
    rows = 300
    window = torch.rand(rows, generator=generator) * 2
    window[::7] = 0.0

    def give_up_some(store):
        store._give_up_rows(torch.arange(5, rows, 50))
    with_native, with_torch = both_passes(k, rows, window, give_up_some)
    for step in range(6):
        tile = bf16_tile(rows if step % 2 else 64, width, generator)  # tiles of 64 rows from row 64, too
        row0 = 0 if step % 2 else 64
        calls = counting(monkeypatch)
        accepted = with_native.offer(tile, row0, step * width, None)
        assert calls == [1], "the C++ pass ran"
        monkeypatch.setattr(screen_tiles, "native_screen", lambda: None)
        assert with_torch.offer(tile, row0, step * width, None) == accepted
        monkeypatch.undo()
        for mine, theirs in zip(with_native.parts, with_torch.parts, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                assert torch.equal(a, b)
        assert torch.equal(with_native.kth_bound, with_torch.kth_bound)
        if k > 1:
            assert torch.equal(with_native.top, with_torch.top)
        assert torch.equal(with_native.row_counts, with_torch.row_counts)
    assert with_native.offered > 0


@needs_native
def test_a_floor_of_zero_takes_negative_zero():
    """Keys order -0 below +0, floats call them equal: a floor of 0 takes both (row 1; row 0's
    bound rises to 2 first)."""
    tile = torch.tensor([[-0.0, 0.0, -1.0, 2.0], [0.0, -0.0, -3.0, -0.0]]).bfloat16()
    bound, top, window = torch.zeros(2), torch.zeros(2, 1), torch.zeros(2)
    rows, cols, scores, near = native(tile.data_ptr(), 2, 4, 1, top.data_ptr(), bound.data_ptr(), window.data_ptr())
    assert near == 2 and rows.tolist() == [0, 1, 1, 1] and cols.tolist() == [3, 0, 1, 3]
    assert bound.tolist() == [2.0, 0.0]


@needs_native
def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="1 <= k <= 64"):
        native(0, 1, 1, 65, 0, 0, 0)


@needs_native
def test_a_tile_taller_than_the_store_is_refused_not_written_past_it(monkeypatch):
    """The C++ pass reads and writes by pointer: a tile whose rows overrun the store is refused
    before either pass runs, instead of writing past the store's tensors."""
    calls = counting(monkeypatch)
    store = screen_candidates.ScreenCandidates(torch.ones(4), k=1)
    with pytest.raises(ValueError, match=r"tile rows 2\.\.4098 overrun the store's 4 rows"):
        store.offer(torch.zeros(4096, 64, dtype=torch.bfloat16), 2, 0, None)
    assert calls == [0]


@pytest.mark.parametrize("tile_pass", ["native", "torch"])
@pytest.mark.parametrize("k", [1, 5])
def test_a_float64_default_dtype_changes_nothing(k, tile_pass, monkeypatch):
    """The screen's state is float32 whatever torch's default dtype (the C++ pass reads it as
    float32): the same matches as the float32 walk, crowded rows (walked) included."""
    if tile_pass == "native":
        if native is None:
            pytest.skip("refmatch._C is not built")
        calls = counting(monkeypatch)
    else:
        monkeypatch.setattr(screen_tiles, "native_screen", lambda: None)
    generator = torch.Generator().manual_seed(k)
    reference, query = torch.randn(2048, 8, generator=generator), torch.randn(256, 8, generator=generator)
    reference[300:400] = 2 * query[0]  # row 0 crowds: walked
    for bank in (reference, torch.ones(2048, 8)):  # constant features: the screen gives up on all rows
        walked = screened_match(query, bank, "dot", block_m=256, k=k, screen=False)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            screened = screened_match(query, bank, "dot", block_m=256, k=k)
        finally:
            torch.set_default_dtype(default)
        assert torch.equal(screened.index, walked.index) and screened.score.dtype == torch.float32
    assert tile_pass == "torch" or calls[0] > 0


@pytest.mark.parametrize("chunks", [1, 2])
def test_chunk_maxima_read_bfloat16_bits_in_float_order(chunks):
    inf = float("inf")
    tile = torch.tensor([[-3.0, -0.0, -1.0, 2.0], [-5.0, -2.0, -7.0, -8.0], [0.5, -9.0, 0.25, -1.0],
                         [-0.0, 0.0, -1.0, -3.0], [-inf, -2.0, -1.0, -inf], [-inf, -inf, -inf, -inf]])
    expected = tile.view(6, chunks, -1).amax(dim=2)
    assert torch.equal(chunk_maxima_bf16(tile.bfloat16(), chunks), expected)
