"""The CPU's exact bfloat16 screen for float32 top k (``torch_screening``) against the float64 oracle."""
import pytest
import torch

from oracle import assert_matches_oracle, dense_scores
from refmatch.backends import torch_screening as screening
from refmatch.backends import screen_candidates
from refmatch.backends.torch_backend import match_chunked
from refmatch.backends.class_ranges import stored_by_class
from refmatch.backends.torch_classwise import classwise_chunked
from screened import screen_small_banks, screened_match, tile_pass  # noqa: F401 (autouse fixtures)

METRICS = ["cosine", "dot", "l2"]


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


def test_l2_norm_column_splits_into_a_bfloat16_head_and_tail():
    """head + tail hold the float32 |r|^2 to 16 bits, so l2's bound charges it u^2, not 3u."""
    references = wide_range(500, 9, generator=torch.Generator().manual_seed(8))
    operand = screening._screen_operand(references, "l2")
    norm_sq = references.square().sum(dim=1).double()
    assert torch.equal(operand[:, :9], references.bfloat16())
    error = (operand[:, 9].double() + operand[:, 10].double() - norm_sq).abs()
    assert (error <= 2.0 ** -16 * norm_sq + 2.0 ** -126).all()
    assert (operand[:, 10] != 0).any(), "the tail carries the head's rounding"


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("with_ignored", [False, True])
@pytest.mark.parametrize("k, block_m", [(1, 64), (5, 64), (5, 128)])  # 128: two runs of 64 per tile
def test_matches_oracle(metric, with_ignored, k, block_m):
    generator = torch.Generator().manual_seed(1)
    query, reference = torch.randn(150, 48, generator=generator), torch.randn(1000, 48, generator=generator)
    ignored = torch.rand(1000, generator=generator) < 0.2 if with_ignored else None
    result = screened_match(query, reference, metric, ignored, block_m=block_m, k=k)
    kept = reference if ignored is None else reference[~ignored]
    if ignored is not None:
        assert not ignored[result.index].any()
        result.index = torch.searchsorted((~ignored).nonzero()[:, 0], result.index)  # positions among kept
    assert_matches_oracle(result, query, kept, metric, k=k)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k, block_m", [(8, 128), (16, 50), (3, 2)])  # 50: one run per tile; 2: tiles narrower than k
def test_top_k_equals_the_float32_walk(metric, k, block_m, monkeypatch):
    """Same indices as the float32 walk, row for row (random features have no float32 near-ties).
    At D = 32 the window holds more candidates than the crowd limit allows some rows: raised."""
    monkeypatch.setattr(screen_candidates, "CROWD_LIMIT", 1 << 10)
    generator = torch.Generator().manual_seed(7)
    query, reference = torch.randn(200, 32, generator=generator), torch.randn(3000, 32, generator=generator)
    screened = screened_match(query, reference, metric, block_m=block_m, k=k)
    walked = screened_match(query, reference, metric, block_m=block_m, k=k, screen=False)
    _, _, unresolved = screening.match_screened(query, reference, None, metric, k, block_m=block_m,
                                                tile_bytes=32 * block_m * 2)
    assert unresolved.numel() == 0, "random features: every row screened"
    assert torch.equal(screened.index, walked.index)
    torch.testing.assert_close(screened.score, walked.score, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("metric", ["dot", "l2"])
@pytest.mark.parametrize("k", [1, 3])
def test_near_ties_go_to_the_float32_winner(metric, k):
    """Twins a bfloat16 GEMM cannot tell apart, the worse one first: the screen must return the
    better one (at k = 3 as third, behind two clear leaders). Their gaps are far above float32
    rounding and below bfloat16's."""
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(16, 32, generator=generator)
    offsets = torch.nn.functional.normalize(torch.randn(4, 16, 32, generator=generator), dim=2)
    filler = torch.randn(600, 32, generator=generator)
    if metric == "dot":  # winners score about 0.06 (the rest < 0.03), twins 0.001 less, leaders 2x and 1.5x
        span = torch.linalg.qr(query.T).Q  # offsets orthogonal to every query
        offsets = offsets - (offsets @ span) @ span.T
        winners, twins, filler = 0.5 * offsets[0] + 2e-3 * query, 0.5 * offsets[1] + 1.97e-3 * query, 1e-3 * filler
        dual = torch.linalg.pinv(query).T * query.square().sum(1, keepdim=True)  # dual[i].query[j]: |q_i|^2 or 0
        leaders = [0.5 * offsets[2] + 4e-3 * dual, 0.5 * offsets[3] + 3e-3 * dual]
    else:  # winners 0.02 from their query, twins 0.03, leaders 0.005 and 0.01
        winners, twins = query + 0.02 * offsets[0], query + 0.03 * offsets[1]
        leaders = [query + 0.005 * offsets[2], query + 0.01 * offsets[3]]
    reference = torch.cat([twins, filler[:100], winners, filler[100:], *leaders[:k - 1]])
    result = screened_match(query, reference, metric, k=k)
    expected = torch.stack([torch.arange(632, 648), torch.arange(648, 664)][:k - 1] + [torch.arange(116, 132)], 1)
    assert torch.equal(result.index.reshape(16, k), expected), "the float32 winner, not its bfloat16 twin"


@pytest.mark.parametrize("k", [1, 2, 4])
def test_exact_ties_take_the_lowest_index_across_blocks(k):
    query = torch.randn(20, 16)
    reference = torch.randn(300, 16)
    reference[250] = reference[10] = reference[130] = query[0] * 3
    result = screened_match(query, reference, "dot", k=k)
    assert result.index.reshape(20, k)[0, :3].tolist() == [10, 130, 250][:k]
    if k == 4:  # then the best of the rest
        assert int(result.index[0, 3]) == int((reference @ query[0]).topk(4).indices[3])


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
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=256, tile_bytes=256 * 256 * 2)
    assert set(range(9)) <= set(unresolved.tolist()) and unresolved.numel() < 64  # (and rows near +-query 0)
    result = screened_match(query, reference, "dot", block_m=256)
    assert torch.equal(result.index[:6], copies.min().expand(6))
    assert torch.equal(result.index[6:9], spread.min().expand(3))
    assert_matches_oracle(result, query, reference, "dot")


def test_screening_gives_up_when_most_rows_crowd():
    """Constant features tie everywhere: every row is handed to the float32 walk, which picks index 0."""
    query, reference = torch.ones(64, 8), torch.ones(2048, 8)
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=256, tile_bytes=64 * 256 * 2)
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


@pytest.mark.parametrize("k", [1, 4])
def test_cosine_skips_references_holding_inf_as_the_walk_does(k):
    """Under cosine a row holding Inf normalises to NaN and never matches; the screen, whose
    cosine bound takes |r| = 1, skipped whole blocks or lost a top-k slot to it."""
    generator = torch.Generator().manual_seed(6)
    query, reference = torch.randn(30, 8, generator=generator), torch.randn(300, 8, generator=generator)
    reference[[7, 150], 2] = float("inf")
    screened = screened_match(query, reference, "cosine", k=k)
    walked = match_chunked(query.T[None, :, :, None], reference, None, k, "cosine", screen=False)
    assert torch.equal(screened.index.reshape(30, k), walked[1]) and (walked[1] >= 0).all()


@pytest.mark.parametrize("metric, a, b", [
    ("dot", [8 * (1 + 2 ** -8 - 3 * 2 ** -16), 0.0], [8 * (1 + 2 ** -8 + 2 ** -16), -8 * (2 ** -8 - 2 * 2 ** -16)]),
    ("cosine", [0.9364381432533264, 0.9364283084869385], [1.0304782390594482, 1.0023787021636963])])
def test_query_rows_too_small_for_a_float32_squared_norm_keep_their_bound(metric, a, b):
    """Entries of 2^-80: their float32 sum of squares underflows to 0, and the error bound
    built on it kept only bfloat16's favourite, b, over the exact best, a."""
    reference = torch.randn(64, 16, generator=torch.Generator().manual_seed(7))
    reference[10], reference[11] = 0, 0
    reference[10, :2], reference[11, :2] = torch.tensor(a), torch.tensor(b)
    query = torch.zeros(1, 16)
    query[0, :2] = 2.0 ** -80
    exact = query.double() @ (reference.double() if metric == "dot" else
                              reference.double() / reference.double().norm(dim=1, keepdim=True)).T
    assert exact.argmax() == 10
    assert screened_match(query, reference, metric).index.item() == 10


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), 1e30])
def test_inputs_it_cannot_bound_take_the_float32_walk(bad):
    reference = torch.randn(200, 16)
    reference[7, 3] = bad
    query = torch.randn(30, 16)
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=64, tile_bytes=64 * 64 * 2)
    assert unresolved.numel() == 30
    screened = screened_match(query, reference, "dot")
    walked = match_chunked(query.T[None, :, :, None], reference, None, 1, "dot", block_m=64, screen=False)
    assert torch.equal(screened.index, walked[1][:, 0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_a_query_row_it_cannot_bound_is_walked_alone(bad):
    """One query row holding NaN, Inf or a huge value: that row goes to the walk, the other 29
    stay screened (the whole pass of rows went to the walk before), and all match as walked."""
    generator = torch.Generator().manual_seed(16)
    reference, query = torch.randn(200, 16, generator=generator), torch.randn(30, 16, generator=generator)
    query[5, 3] = bad
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=64, tile_bytes=64 * 64 * 2)
    assert unresolved.tolist() == [5]
    screened = screened_match(query, reference, "dot")
    walked = match_chunked(query.T[None, :, :, None], reference, None, 1, "dot", block_m=64, screen=False)
    assert torch.equal(screened.index, walked[1][:, 0])


@pytest.mark.parametrize("side", ["query", "reference"])
def test_entries_that_bfloat16_rounds_to_inf_take_the_float32_walk(side):
    """3.4e38 is a float32 number but inf in bfloat16; with tiny other rows the error bound stayed
    small, and the query row came back resolved with no match (the walk finds reference 15)."""
    generator = torch.Generator().manual_seed(19)
    query, reference = torch.zeros(2, 8), torch.randn(300, 8, generator=generator) * 1e-30
    query[1] = torch.randn(8, generator=generator)
    if side == "query":
        query[0, 0] = 3.4e38
        reference[::2, 0] = 0
    else:
        query[0] = torch.randn(8, generator=generator) * 1e-30
        reference[15, 0] = 3.4e38
    _, _, unresolved = screening.match_screened(query, reference, None, "dot", block_m=64, tile_bytes=64 * 64 * 2)
    assert 0 in unresolved.tolist()
    screened = screened_match(query, reference, "dot")
    walked = match_chunked(query.T[None, :, :, None], reference, None, 1, "dot", block_m=64, screen=False)
    assert torch.equal(screened.index, walked[1][:, 0])


def test_slots_beyond_the_matchable_references_get_minus_one():
    ignored = torch.ones(100, dtype=torch.bool)
    ignored[[3, 40, 77]] = False
    query, reference = torch.randn(5, 8), torch.randn(100, 8)
    screened = screened_match(query, reference, "l2", ignored=ignored, k=6)
    walked = screened_match(query, reference, "l2", ignored=ignored, k=6, screen=False)
    assert torch.equal(screened.index, walked.index) and (screened.index[:, 3:] == -1).all()
    assert torch.equal(screened.score.isinf(), walked.score.isinf())


def test_rows_with_no_matchable_reference_get_minus_one():
    reference = torch.randn(100, 8)
    result = screened_match(torch.randn(5, 8), reference, "cosine", ignored=torch.ones(100, dtype=torch.bool))
    assert torch.equal(result.index, torch.full((5,), -1))
    assert torch.isneginf(result.score).all()


def test_screen_applies_only_where_it_pays(monkeypatch):
    rows, reference = torch.empty(8192, 128), torch.empty(65536, 128)
    native = screening.native_bf16()
    assert screening.screening_applies(rows, reference, 1) == native
    assert screening.screening_applies(rows, reference, screening.MAX_K) == native
    assert not screening.screening_applies(rows, reference, screening.MAX_K + 1)
    assert match_chunked(torch.randn(1, 8, 4, 4), torch.randn(50, 8), None, 3, "dot", screen=True)[1].shape == (16, 3)
    monkeypatch.setenv("REFMATCH_BF16_SCREEN", "0")
    assert not screening.screening_applies(rows, reference, 1)
    if native:  # refmatch info says it is off, not what the CPU could do
        from refmatch.backends.torch_backend import TorchBackend
        assert TorchBackend.status(None)[1].endswith("the float32 screen is off (REFMATCH_BF16_SCREEN=0)")
    assert not screening.screening_applies(rows.double(), reference.double(), 1)
    assert not screening.screening_applies(rows[:16], reference, 1)
    assert screening.screening_applies(rows[:16], reference, 1, screen=True)  # forced, for tests
    for unscreenable in [(rows.double(), reference.double(), 1), (rows[:0], reference, 1),
                         (rows, reference, screening.MAX_K + 1)]:
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


def test_info_names_a_bad_screen_setting_instead_of_failing(monkeypatch):
    """refmatch info stopped at the error, the one time its report was needed."""
    from refmatch.backends import torch_backend

    monkeypatch.setattr(screening, "native_bf16", lambda: True)
    monkeypatch.setenv("REFMATCH_BF16_SCREEN", "off")
    assert torch_backend.TorchBackend.status(None)[1].endswith(
        "float32 calls raise: REFMATCH_BF16_SCREEN must be one of '1', '0', got 'off'")
