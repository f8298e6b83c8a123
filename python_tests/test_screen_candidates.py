"""The screen's candidate store (``screen_candidates``): when it gives up on rows, how often it
compacts, how it passes rows, against the float32 walk and the float64 oracle."""
import pytest
import torch

from oracle import assert_matches_oracle
from refmatch.backends import screen_candidates
from refmatch.backends import torch_screening as screening
from refmatch.backends.torch_classwise import classwise_chunked
from screened import screen_small_banks, screened_match, tile_pass  # noqa: F401 (autouse fixtures)

MAX_HIT_RATE = screen_candidates.MAX_HIT_RATE


def test_slowly_crowding_rows_give_up_at_a_checkpoint(monkeypatch):
    """Every reference block of 64 holds two near-copies of each query's best: 0.03 candidates per
    row and reference, over the limit of 3e-3 at k = 1, so the second checkpoint (at 8192
    references) stops the screen half way; the crowd limit is raised so that it is not what
    stops it first."""
    monkeypatch.setattr(screen_candidates, "MAX_HIT_RATE", MAX_HIT_RATE)
    monkeypatch.setattr(screen_candidates, "CROWD_LIMIT", 1 << 10)
    generator = torch.Generator().manual_seed(6)
    directions = torch.randn(8, 16, generator=generator)
    query = directions.repeat_interleave(32, dim=0)  # 256 rows, 8 directions
    blocks = []
    for _ in range(128):
        near_copies = 2 * directions.repeat(2, 1) + 1e-4 * torch.randn(16, 16, generator=generator)
        blocks.append(torch.cat([near_copies, torch.randn(48, 16, generator=generator)]))
    reference = torch.cat(blocks)
    decisions = []
    checkpoint = screen_candidates.ScreenCandidates.checkpoint
    monkeypatch.setattr(screen_candidates.ScreenCandidates, "checkpoint",
                        lambda self, done: decisions.append((done, checkpoint(self, done))) or decisions[-1][1])
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=64, tile_bytes=256 * 64 * 2)
    assert decisions[-1] == (2 * screen_candidates.CHECK_EVERY, False) and unresolved.numel() == 256
    result = screened_match(query, reference, "dot")
    assert_matches_oracle(result, query, reference, "dot")


@pytest.mark.parametrize("k, rate, screens_on", [(1, 1.45e-3, True), (1, 1.55e-3, False), (8, 0.70e-3, True),
                                                 (8, 0.73e-3, False)])
def test_the_rate_limit_is_looser_for_small_k(monkeypatch, k, rate, screens_on):
    """Candidates per row, reference and k + 1 since the last check, against the limit
    0.6e-3 + 0.9e-3 / k: 1.5e-3 at k = 1, 0.7125e-3 at k = 8."""
    monkeypatch.setattr(screen_candidates, "MAX_HIT_RATE", MAX_HIT_RATE)
    rows = 1000
    store = screen_candidates.ScreenCandidates(torch.ones(rows), k)
    assert store.checkpoint(screen_candidates.CHECK_EVERY)  # the first check only records
    store.offered += round(rate * (k + 1) * rows * screen_candidates.CHECK_EVERY)
    assert store.checkpoint(2 * screen_candidates.CHECK_EVERY) == screens_on


@pytest.mark.skipif(not screening.native_bf16(), reason="the screen runs by default only with native bfloat16")
def test_classwise_walks_once_when_a_class_is_too_small_to_screen(monkeypatch):
    from refmatch.backends import cpu_topk, torch_classwise

    monkeypatch.setenv("REFMATCH_CPU_TOPK", "0")  # the GEMM walk: with the fused one, every class takes its own
    per_class_calls = []
    match_rows = torch_classwise.match_rows
    monkeypatch.setattr(torch_classwise, "match_rows", lambda *args: per_class_calls.append(1) or match_rows(*args))
    query, reference = torch.randn(60, 16), torch.randn(500, 16)
    labels = torch.cat([torch.zeros(450), torch.ones(50)]).long()
    maps = query.T[None, :, :, None]
    monkeypatch.setattr(screening, "MIN_WORK", 60 * 400 * 16)  # the bank and class 0 qualify, class 1 does not
    classwise_chunked(maps, reference, labels, None, 2, "dot")
    assert per_class_calls == []
    monkeypatch.setattr(screening, "MIN_WORK", 60 * 40 * 16)  # both classes qualify
    classwise_chunked(maps, reference, labels, None, 2, "dot")
    assert per_class_calls == [1, 1]
    monkeypatch.setattr(screening, "MIN_WORK", 60 * 400 * 16)
    monkeypatch.delenv("REFMATCH_CPU_TOPK")
    classwise_chunked(maps, reference, labels, None, 2, "dot")
    assert per_class_calls == [1, 1] + [1, 1] * bool(cpu_topk.native_isas())


def test_a_row_crowding_after_its_first_tiles_is_walked_not_padded(monkeypatch):
    """Row 0's best reference has 1000 copies from the 16th block on: the final compaction hands
    it (and rows that like those copies too) to the walk instead of padding every row's candidates
    to 1000; the result is still the walk's."""
    widths = []
    keep_best = screen_candidates.keep_best
    monkeypatch.setattr(screen_candidates, "keep_best",
                        lambda score, *rest: widths.append(score.shape[1]) or keep_best(score, *rest))
    generator = torch.Generator().manual_seed(9)
    query, reference = torch.randn(200, 16, generator=generator), torch.randn(3000, 16, generator=generator)
    reference[1000:2000] = 3 * query[0]
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=64,
                                                tile_bytes=32 * 64 * 2)
    assert 0 in unresolved.tolist() and unresolved.numel() < 50
    assert widths == [max(widths)] and widths[0] <= screen_candidates.crowd_limit(1)
    screened = screened_match(query, reference, "dot")
    assert int(screened.index[0]) == 1000
    assert torch.equal(screened.index, screened_match(query, reference, "dot", screen=False).index)


def test_many_live_candidates_do_not_compact_every_tile(monkeypatch):
    """Each row keeps 40 to 48 tied candidates (under the crowd limit of 64, over the first budget
    of 32 per row), and every later block brings one more for some rows: the budget rises to twice
    what a compaction keeps, so compactions stay few instead of one per block. (A first block this
    crowded would stop the screen: that check is off here.)"""
    monkeypatch.setattr(screen_candidates, "MIN_BUDGET", 0)
    monkeypatch.setattr(screen_candidates, "FIRST_BLOCK_CANDIDATES", float("inf"))
    generator = torch.Generator().manual_seed(10)
    centers = torch.nn.functional.normalize(torch.randn(8, 16, generator=generator), dim=1)
    query = centers.repeat_interleave(32, dim=0)
    later = [torch.cat([centers[block % 8, None], 0.1 * torch.randn(63, 16, generator=generator)])
             for block in range(64)]
    reference = torch.cat([centers.repeat(40, 1), *later])
    compactions = []
    compact = screen_candidates.ScreenCandidates.compact
    monkeypatch.setattr(screen_candidates.ScreenCandidates, "compact",
                        lambda self: compactions.append(self.stored) or compact(self))
    _, index, unresolved = screening.match_screened(query, reference, None, "dot", block_m=64,
                                                    tile_bytes=256 * 64 * 2)
    assert unresolved.numel() == 0 and torch.equal(index[:, 0], torch.arange(256) // 32)
    assert len(compactions) <= 3, f"{len(compactions)} compactions"


def test_row_passes_bound_the_candidates_and_keep_row_numbers(monkeypatch):
    """With room for 48 rows per pass, 200 rows take 5 passes; row 130's crowd (in the third
    pass) is reported as row 130, and rows screened either way agree with one pass."""
    generator = torch.Generator().manual_seed(11)
    query, reference = torch.randn(200, 16, generator=generator), torch.randn(2000, 16, generator=generator)
    reference[500:700] = query[130]
    one_pass = screening.match_screened(query, reference, None, "l2", 4, block_m=64, tile_bytes=32 * 64 * 2)
    monkeypatch.setattr(screen_candidates, "STORED_LIMIT", 48 * 2 * screen_candidates.crowd_limit(4))
    assert screen_candidates.rows_per_pass(4) == 48
    passes = screening.match_screened(query, reference, None, "l2", 4, block_m=64, tile_bytes=32 * 64 * 2)
    assert 130 in passes[2].tolist() and 130 in one_pass[2].tolist()
    screened = torch.ones(200, dtype=torch.bool)
    screened[passes[2]] = screened[one_pass[2]] = False
    assert screened.sum() > 150
    assert torch.equal(passes[1][screened], one_pass[1][screened])
    assert torch.equal(passes[0][screened], one_pass[0][screened])
    assert (passes[1][passes[2]] == -1).all() and torch.isneginf(passes[0][passes[2]]).all()


def test_top_k_reads_runs_in_blocks_with_ignored_references(monkeypatch):
    """One reference in 97 ignored: every block drops one and is 127 wide, which the runs of 64
    cover with -inf padding; the screen stores no more candidates than on the kept bank alone
    (the bound fell back to tile maxima before: 1.35x the candidates)."""
    offered = []
    rescore = screen_candidates.ScreenCandidates.rescore
    monkeypatch.setattr(screen_candidates.ScreenCandidates, "rescore",
                        lambda self, *args: offered.append(self.offered) or rescore(self, *args))
    generator = torch.Generator().manual_seed(12)
    query, reference = torch.randn(512, 32, generator=generator), torch.randn(8192, 32, generator=generator)
    ignored = torch.zeros(8192, dtype=torch.bool)
    ignored[::97] = True
    with_ignored = screening.match_screened(query, reference, ignored, "cosine", 8, block_m=128)
    kept_only = screening.match_screened(query, reference[~ignored], None, "cosine", 8, block_m=128)
    assert with_ignored[2].numel() == kept_only[2].numel() == 0
    assert torch.equal((~ignored).nonzero()[:, 0][kept_only[1]], with_ignored[1])
    assert offered[0] <= 1.05 * offered[1], offered


@pytest.mark.parametrize("metric", ["dot", "l2", "cosine"])
def test_rescoring_in_small_pieces_gives_the_scores_of_one_piece(monkeypatch, metric):
    """Pairs are rescored a few at a time (buffers that stay in cache); with room for 5 pairs of
    16 floats per piece, 23 pairs take 5 pieces, the last one short, and score as one piece does."""
    generator = torch.Generator().manual_seed(13)
    query, reference = torch.randn(6, 16, generator=generator), torch.randn(40, 16, generator=generator)
    rows = torch.randint(0, 6, (23,), generator=generator).sort().values
    cols = torch.randint(0, 40, (23,), generator=generator)
    whole = screen_candidates.exact_scores(query, reference, rows, cols, metric)
    monkeypatch.setattr(screen_candidates, "RESCORE_BYTES", 5 * 16 * 4)
    einsum, piece_sizes = torch.einsum, []
    monkeypatch.setattr(torch, "einsum",
                        lambda equation, a, b: piece_sizes.append(a.shape[0]) or einsum(equation, a, b))
    pieces = screen_candidates.exact_scores(query, reference, rows, cols, metric)
    assert piece_sizes == [5, 5, 5, 5, 3]
    torch.testing.assert_close(pieces, whole, rtol=0, atol=0)
    exact = query.double()[rows], reference.double()[cols]
    if metric == "cosine":
        exact = exact[0], exact[1] / exact[1].norm(dim=1, keepdim=True)
    oriented = (exact[0] * exact[1]).sum(1)
    if metric == "l2":
        oriented = 2 * oriented - exact[1].square().sum(1)
    torch.testing.assert_close(pieces.double(), oriented, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 8])
def test_features_crowded_from_the_first_block_stop_the_screen_there(monkeypatch, k):
    """Tight clusters: a quarter of each 128-reference block lies within a row's window, far above
    what random features give (about 1 per row and k + 1), so the screen hands every row to the
    walk after its first block (it went on for blocks before, crowding slowly). Random features of
    the same shape are screened to the end; a bank of one block is never given up for its crowd."""
    blocks = []
    offer = screen_candidates.ScreenCandidates.offer
    monkeypatch.setattr(screen_candidates.ScreenCandidates, "offer",
                        lambda self, tile, row0, col0, kept: blocks.append(col0) or offer(self, tile, row0, col0, kept))
    generator = torch.Generator().manual_seed(14)
    centers = torch.randn(4, 32, generator=generator)
    pick = lambda count: centers[torch.randint(0, 4, (count,), generator=generator)]  # noqa: E731
    query, reference = pick(256) + 0.05 * torch.randn(256, 32, generator=generator), pick(4096)
    reference += 0.05 * torch.randn(4096, 32, generator=generator)
    _, index, unresolved = screening.match_screened(query, reference, None, "dot", k, block_m=128)
    assert set(blocks) == {0} and unresolved.numel() == 256 and (index == -1).all()
    blocks.clear()
    _, _, unresolved = screening.match_screened(query, reference[:128], None, "dot", k, block_m=128)
    assert unresolved.numel() < 256  # one block: its candidates are rescored, not thrown away
    blocks.clear()
    query, reference = torch.randn(256, 32, generator=generator), torch.randn(4096, 32, generator=generator)
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", k, block_m=128)
    assert len(set(blocks)) == 32 and unresolved.numel() == 0


def test_after_a_pass_gives_up_on_crowded_features_the_later_passes_walk(monkeypatch):
    """200 rows in 5 passes of 48 against tight clusters: the first pass gives up in its first
    block, and the other 4 hand their rows to the walk without screening a block (each screened
    its first block and gave up too, before)."""
    monkeypatch.setattr(screen_candidates, "STORED_LIMIT", 48 * 2 * screen_candidates.crowd_limit(4))
    passes = []
    screen_pass = screening._screen_pass
    monkeypatch.setattr(screening, "_screen_pass", lambda part, *args: passes.append(part.shape[0])
                        or screen_pass(part, *args))
    generator = torch.Generator().manual_seed(15)
    centers = torch.randn(4, 16, generator=generator)
    pick = lambda count: centers[torch.randint(0, 4, (count,), generator=generator)]  # noqa: E731
    query = pick(200) + 0.05 * torch.randn(200, 16, generator=generator)
    reference = pick(2000) + 0.05 * torch.randn(2000, 16, generator=generator)
    score, index, unresolved = screening.match_screened(query, reference, None, "l2", 4, block_m=64)
    assert passes == [48] and torch.equal(unresolved, torch.arange(200))
    assert (index == -1).all() and torch.isneginf(score).all()


def test_crowded_features_stop_after_the_first_tile_of_2048_rows(monkeypatch):
    """Tiles would take all 4096 rows; the first block's first tile takes 2048, after which
    crowded features stop the screen (half the work wasted before)."""
    tiles = []
    offer = screen_candidates.ScreenCandidates.offer
    monkeypatch.setattr(screen_candidates.ScreenCandidates, "offer",
                        lambda self, tile, row0, col0, kept: tiles.append((row0, col0, tile.shape[0]))
                        or offer(self, tile, row0, col0, kept))
    generator = torch.Generator().manual_seed(17)
    centers = torch.randn(4, 8, generator=generator)
    pick = lambda count: centers[torch.randint(0, 4, (count,), generator=generator)]  # noqa: E731
    query, reference = pick(4096) + 0.05 * torch.randn(4096, 8, generator=generator), pick(512)
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", 1, block_m=128,
                                                tile_bytes=4096 * 128 * 2)
    assert tiles == [(0, 0, 2048)] and unresolved.numel() == 4096
    tiles.clear()
    query = torch.randn(4096, 8, generator=generator)
    screening.match_screened(query, torch.randn(512, 8, generator=generator), None, "dot", 1, block_m=128,
                             tile_bytes=4096 * 128 * 2)
    assert tiles[:3] == [(0, 0, 2048), (2048, 0, 2048), (0, 128, 4096)]
