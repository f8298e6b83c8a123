"""The CPU's exact bfloat16 screen for float32 k = 1 (``torch_screening``) against the float64 oracle."""
from types import SimpleNamespace

import pytest
import torch

from oracle import assert_matches_oracle, dense_scores
from refmatch.backends import torch_screening as screening
from refmatch.backends import screen_candidates
from refmatch.backends.screen_candidates import row_max_bf16
from refmatch.backends.torch_backend import match_chunked
from refmatch.backends.cuda_classwise import stored_by_class
from refmatch.backends.torch_classwise import classwise_chunked

METRICS = ["cosine", "dot", "l2"]


def screened_match(query, reference, metric, ignored=None, block_m=64):
    """match_chunked with the screen forced on (tiles of 32 rows), as a result the oracle helpers read."""
    score, index = match_chunked(query.T[None, :, :, None], reference, ignored, 1, metric,
                                 block_m=block_m, tile_bytes=32 * block_m * 2, screen=True)
    return SimpleNamespace(score=score[:, 0], index=index[:, 0])


def wide_range(*shape, generator):
    """Gaussian values scaled over six decades, so rounding hits every exponent."""
    scale = 10.0 ** torch.empty(shape).uniform_(-3, 3, generator=generator)
    return torch.randn(shape, generator=generator) * scale


@pytest.mark.parametrize("metric", ["dot", "l2"])
@pytest.mark.parametrize("depth", [1, 7, 64, 300])
def test_error_bound_holds_for_the_bfloat16_gemm(metric, depth):
    generator = torch.Generator().manual_seed(depth)
    rows, refs = wide_range(97, depth, generator=generator), wide_range(203, depth, generator=generator)
    screened = (screening._screen_query(rows, metric) @ screening._screen_operand(refs, metric).T).double()
    exact = rows.double() @ refs.double().T
    if metric == "l2":
        exact = exact - refs.square().sum(dim=1).double()[None, :] / 2  # the float32 |r|^2 the walk uses
    norm_max = float(refs.double().norm(dim=1).max())
    bound = screening.screen_error(rows.double().norm(dim=1), norm_max, metric, depth)
    error = (screened - exact).abs()
    assert (error <= bound[:, None]).all(), f"worst error / bound {float((error / bound[:, None]).max()):.3f}"
    assert float((error / bound[:, None]).max()) > 0.01, "the bound should not be vacuous"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("with_ignored", [False, True])
def test_matches_oracle(metric, with_ignored):
    generator = torch.Generator().manual_seed(1)
    query, reference = torch.randn(150, 48, generator=generator), torch.randn(1000, 48, generator=generator)
    ignored = torch.rand(1000, generator=generator) < 0.2 if with_ignored else None
    result = screened_match(query, reference, metric, ignored)
    kept = reference if ignored is None else reference[~ignored]
    if ignored is not None:
        assert not ignored[result.index].any()
        result.index = torch.searchsorted((~ignored).nonzero()[:, 0], result.index)  # positions among kept
    assert_matches_oracle(result, query, kept, metric)


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_near_ties_go_to_the_float32_winner(metric):
    """Twins a bfloat16 GEMM cannot tell apart, the worse one first: the screen must return the
    better one. Their gaps are far above float32 rounding and below bfloat16's."""
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(16, 32, generator=generator)
    offsets = torch.nn.functional.normalize(torch.randn(2, 16, 32, generator=generator), dim=2)
    filler = torch.randn(600, 32, generator=generator)
    if metric == "dot":  # winners score about 0.06 (the rest < 0.03), twins 0.001 less
        span = torch.linalg.qr(query.T).Q  # offsets orthogonal to every query
        offsets = offsets - (offsets @ span) @ span.T
        winners, twins, filler = 0.5 * offsets[0] + 2e-3 * query, 0.5 * offsets[1] + 1.97e-3 * query, 1e-3 * filler
    else:  # winners 0.02 from their query, twins 0.03
        winners, twins = query + 0.02 * offsets[0], query + 0.03 * offsets[1]
    reference = torch.cat([twins, filler[:100], winners, filler[100:]])
    result = screened_match(query, reference, metric)
    assert torch.equal(result.index, torch.arange(116, 132)), "the float32 winner, not its bfloat16 twin"


def test_exact_ties_take_the_lowest_index_across_blocks():
    query = torch.randn(20, 16)
    reference = torch.randn(300, 16)
    reference[250] = reference[10] = reference[130] = query[0] * 3
    result = screened_match(query, reference, "dot")
    assert int(result.index[0]) == 10


def test_crowded_rows_are_walked_in_float32(monkeypatch):
    """Rows whose best reference has 100 copies (in one tile, or spread over tiles) leave the
    screen at a compaction (forced by a small budget); the float32 walk gives them the first
    copy, the other rows stay screened."""
    monkeypatch.setattr(screen_candidates, "MIN_BUDGET", 2000)
    monkeypatch.setattr(screen_candidates, "BUDGET_PER_ROW", 4)
    generator = torch.Generator().manual_seed(3)
    reference, query = torch.randn(2048, 8, generator=generator), torch.randn(256, 8, generator=generator)
    copies = torch.arange(300, 400)
    spread = torch.cat([torch.arange(0, 256, 8), torch.arange(512, 2048, 22)])[:100]  # <= 32 per tile
    query[0] = 3 * torch.nn.functional.normalize(query[0], dim=0)  # copies score 18, the rest about 10 at most
    reference[copies], reference[spread] = query[0] * 2, query[0] * -2
    query[:6], query[6:9] = query[0], -query[0]
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", 256, 256 * 256 * 2)
    assert set(range(9)) <= set(unresolved.tolist()) and unresolved.numel() < 64  # (and rows near +-query 0)
    result = screened_match(query, reference, "dot", block_m=256)
    assert torch.equal(result.index[:6], copies.min().expand(6))
    assert torch.equal(result.index[6:9], spread.min().expand(3))
    assert_matches_oracle(result, query, reference, "dot")


def test_screening_gives_up_when_most_rows_crowd():
    """Constant features tie everywhere: every row is handed to the float32 walk, which picks index 0."""
    query, reference = torch.ones(64, 8), torch.ones(2048, 8)
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", 256, 64 * 256 * 2)
    assert unresolved.numel() == 64
    result = screened_match(query, reference, "dot", block_m=256)
    assert torch.equal(result.index, torch.zeros(64, dtype=torch.int64))


def test_nan_references_are_skipped_like_ignored_ones():
    generator = torch.Generator().manual_seed(4)
    query, reference = torch.randn(30, 16, generator=generator), torch.randn(200, 16, generator=generator)
    reference[[7, 150]] = float("nan")
    result = screened_match(query, reference, "cosine")
    _, _, unresolved = screening.match_screened(query, reference, None, "cosine")
    assert unresolved.numel() == 0 and not torch.isin(result.index, torch.tensor([7, 150])).any()
    kept = torch.ones(200, dtype=torch.bool)
    kept[[7, 150]] = False
    result.index = torch.searchsorted(kept.nonzero()[:, 0], result.index)
    assert_matches_oracle(result, query, reference[kept], "cosine")


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), 1e30])
def test_inputs_it_cannot_bound_take_the_float32_walk(bad):
    reference = torch.randn(200, 16)
    reference[7, 3] = bad
    query = torch.randn(30, 16)
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", 64, 64 * 64 * 2)
    assert unresolved.numel() == 30
    screened = screened_match(query, reference, "dot")
    walked = match_chunked(query.T[None, :, :, None], reference, None, 1, "dot", block_m=64, screen=False)
    assert torch.equal(screened.index, walked[1][:, 0])


def test_rows_with_no_matchable_reference_get_minus_one():
    reference = torch.randn(100, 8)
    result = screened_match(torch.randn(5, 8), reference, "cosine", ignored=torch.ones(100, dtype=torch.bool))
    assert torch.equal(result.index, torch.full((5,), -1))
    assert torch.isneginf(result.score).all()


def test_row_max_reads_bfloat16_bits_in_float_order():
    tile = torch.tensor([[-3.0, -0.0, -1.0], [-5.0, -2.0, -7.0], [0.5, -9.0, 0.25], [-0.0, 0.0, -1.0]])
    expected = tile.amax(dim=1)
    assert torch.equal(row_max_bf16(tile.bfloat16()), expected)


def test_screen_applies_only_where_it_pays(monkeypatch):
    rows, reference = torch.empty(8192, 128), torch.empty(65536, 128)
    native = screening.native_bf16()
    assert screening.screening_applies(rows, reference, 1) == native
    assert not screening.screening_applies(rows, reference, 2)
    assert match_chunked(torch.randn(1, 8, 4, 4), torch.randn(50, 8), None, 3, "dot", screen=True)[1].shape == (16, 3)
    monkeypatch.setenv("REFMATCH_BF16_SCREEN", "0")
    assert not screening.screening_applies(rows, reference, 1)
    assert not screening.screening_applies(rows.double(), reference.double(), 1)
    assert not screening.screening_applies(rows[:16], reference, 1)
    assert screening.screening_applies(rows[:16], reference, 1, screen=True)  # forced, for tests
    for unscreenable in [(rows.double(), reference.double(), 1), (rows[:0], reference, 1), (rows, reference, 3)]:
        assert not screening.screening_applies(*unscreenable, screen=True)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("grouped", [True, False])
def test_classwise_takes_one_screened_match_per_class(metric, grouped):
    """A bank stored class by class: one screened k = 1 per class (class 3 empty, some rows ignored);
    other banks take the class-wise walk. Both agree with the oracle's per-class best."""
    generator = torch.Generator().manual_seed(5)
    query, reference = torch.randn(60, 16, generator=generator), torch.randn(500, 16, generator=generator)
    labels = torch.randint(0, 3, (500,), generator=generator)
    labels = labels.sort().values if grouped else labels
    ignored = torch.rand(500, generator=generator) < 0.1
    scores = classwise_chunked(query.T[None, :, :, None], reference, labels, ignored, 4, metric, block_m=64,
                               screen=True)
    assert stored_by_class(labels, ignored) == grouped
    dense = dense_scores(query, reference, metric)
    for cls in range(3):
        columns = dense[:, (labels == cls) & ~ignored]
        expected = columns.min(1).values if metric == "l2" else columns.max(1).values
        torch.testing.assert_close(scores[:, cls].double(), expected, atol=1e-4, rtol=1e-5)
    assert (scores[:, 3] == (float("inf") if metric == "l2" else float("-inf"))).all()


def test_slowly_crowding_rows_give_up_at_a_checkpoint(monkeypatch):
    """Every reference block holds two near-copies of each query's best: two candidates per row and
    block, over the limit of 0.5, so the second checkpoint stops the screen half way."""
    generator = torch.Generator().manual_seed(6)
    directions = torch.randn(8, 16, generator=generator)
    query = directions.repeat_interleave(32, dim=0)  # 256 rows, 8 directions
    blocks = []
    for _ in range(64):
        near_copies = 2 * directions.repeat(2, 1) + 1e-4 * torch.randn(16, 16, generator=generator)
        blocks.append(torch.cat([near_copies, torch.randn(48, 16, generator=generator)]))
    reference = torch.cat(blocks)
    decisions = []
    checkpoint = screen_candidates.ScreenCandidates.checkpoint
    monkeypatch.setattr(screen_candidates.ScreenCandidates, "checkpoint",
                        lambda self, done: decisions.append((done, checkpoint(self, done))) or decisions[-1][1])
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", 64, 256 * 64 * 2)
    assert decisions[-1] == (32, False) and unresolved.numel() == 256
    result = screened_match(query, reference, "dot")
    assert_matches_oracle(result, query, reference, "dot")


@pytest.mark.skipif(not screening.native_bf16(), reason="the screen runs by default only with native bfloat16")
def test_classwise_walks_once_when_a_class_is_too_small_to_screen(monkeypatch):
    from refmatch.backends import torch_classwise

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
