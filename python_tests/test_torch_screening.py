"""The bfloat16 screen of the CPU's fused float32 walk (``torch_screening``, csrc/cpu_topk_isa.cpp):
the walk's results to the bit, on features where the bfloat16 ranking differs from float32's."""
import pytest
import torch

import refmatch
from oracle import assert_matches_oracle, dense_scores
from refmatch.backends import cpu_topk
from refmatch.backends import torch_screening as screening
from refmatch.backends.class_ranges import stored_by_class
from refmatch.backends.torch_backend import fused_walk, match_chunked
from refmatch.backends.torch_classwise import classwise_chunked

needs_screen = pytest.mark.skipif(not cpu_topk.screen_available(),
                                  reason="no bfloat16 screen here (refmatch._C, AVX-512 with AVX512_BF16)")
METRICS = ["cosine", "dot", "l2"]


@pytest.fixture(autouse=True)
def small_native_calls(monkeypatch):
    """At least 700 references per native call at D <= 64: a few thousand cross calls and sub-blocks."""
    monkeypatch.setattr(cpu_topk, "PREPARED_BYTES", 700 * 4 * 64)


def wide_range(*shape, generator):
    """Gaussian values scaled over six decades, so rounding hits every exponent."""
    scale = 10.0 ** torch.empty(shape).uniform_(-3, 3, generator=generator)
    return torch.randn(shape, generator=generator) * scale


def fused(query, reference, metric, k=1, ignored=None, window=None):
    """The fused walk of [N, D] rows: (score [N, k], index [N, k], (vectors, float32 vectors))."""
    return fused_walk(query, reference, ignored, k, metric, window)


def screened_and_walked(query, reference, metric, k=1, ignored=None):
    """Both fused walks, screened and not; asserts they agree to the bit. Returns the screened
    one's share of vectors scored in float32."""
    screened = fused(query, reference, metric, k, ignored, screening.screen_window(query, reference, ignored, metric))
    walked = fused(query, reference, metric, k, ignored)
    assert torch.equal(screened[0], walked[0]) and torch.equal(screened[1], walked[1])
    vectors, float32 = screened[2]
    return float32 / vectors


@needs_screen
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("features", ["gaussian", "wide range", "clusters"])
@pytest.mark.parametrize("k, depth", [(1, 64), (3, 1), (8, 7), (40, 33)])
def test_the_walks_results_to_the_bit(metric, features, k, depth):
    generator = torch.Generator().manual_seed(depth + k)
    if features == "gaussian":
        query, reference = torch.randn(100, depth, generator=generator), torch.randn(3000, depth, generator=generator)
    elif features == "wide range":
        query, reference = wide_range(100, depth, generator=generator), wide_range(3000, depth, generator=generator)
    else:
        centers = torch.randn(4, depth, generator=generator)
        query = centers[torch.arange(100) % 4] + 0.1 * torch.randn(100, depth, generator=generator)
        reference = centers[torch.arange(3000) % 4] + 0.1 * torch.randn(3000, depth, generator=generator)
    ignored = torch.rand(3000, generator=generator) < 0.1
    share = screened_and_walked(query, reference, metric, k, ignored)
    if features == "gaussian" and depth == 64:
        assert share < 0.2, "random features: most vectors screened out"


@needs_screen
def test_the_window_is_what_keeps_the_float32_winner():
    """Without its window the screen drops references that only float32 ranks first: the
    equality above rests on the window, not on features too easy to tell apart."""
    generator = torch.Generator().manual_seed(1)
    query, reference = torch.randn(300, 64, generator=generator), torch.randn(4000, 64, generator=generator)
    walked = fused(query, reference, "dot")
    window = screening.screen_window(query, reference, None, "dot")
    narrow = fused(query, reference, "dot", window=torch.zeros_like(window))
    assert not torch.equal(narrow[1], walked[1])
    assert torch.equal(fused(query, reference, "dot", window=window)[1], walked[1])


def test_error_bound_holds_for_bfloat16_dot_products():
    """|sum of bfloat16 products - the float32 score| stays under the window, with room to spare
    only by a factor: the bound is not vacuous."""
    generator = torch.Generator().manual_seed(2)
    for metric, depth in [("dot", 1), ("dot", 300), ("l2", 7), ("l2", 64)]:
        rows, refs = wide_range(97, depth, generator=generator), wide_range(203, depth, generator=generator)
        alpha = 2.0 if metric == "l2" else 1.0
        bias = -refs.square().sum(dim=1) if metric == "l2" else torch.zeros(203)
        screened = alpha * (rows.bfloat16().double() @ refs.bfloat16().double().T) + bias.double()
        walked = torch.addmm(bias, rows, refs.T, alpha=alpha).double()
        error = (screened - walked).abs() / screening.screen_window(rows, refs, None, metric).double()[:, None]
        assert float(error.max()) <= 1 and float(error.max()) > 0.01, (metric, depth, float(error.max()))


@needs_screen
@pytest.mark.parametrize("k", [1, 2, 4])
def test_exact_ties_take_the_lowest_index_across_calls(k):
    query, reference = torch.randn(20, 16), torch.randn(3000, 16)
    reference[2500] = reference[10] = reference[1300] = query[0] * 3
    screened_and_walked(query, reference, "dot", k)
    assert fused(query, reference, "dot", k, window=screening.screen_window(query, reference, None, "dot"))[1][
        0, :3].tolist() == [10, 1300, 2500][:k]


@needs_screen
@pytest.mark.parametrize("k", [1, 3])
def test_exact_ties_a_step_apart_take_the_lowest_index(k):
    """Each step of 32 references repeats the one before: a row's twins are rescored in float32
    side by side (8 vectors at a time), and the lower index of each pair still comes first."""
    generator = torch.Generator().manual_seed(k)
    query, steps = torch.randn(300, 32, generator=generator), torch.randn(64, 32, 32, generator=generator)
    reference = steps.repeat_interleave(2, dim=0).reshape(-1, 32)  # reference j + 32 = reference j
    assert screened_and_walked(query, reference, "dot", k) < 0.2, "most vectors screened out"
    index = fused(query, reference, "dot", k)[1]
    assert bool((index // 32 % 2 == 0).all() if k == 1 else (index[:, 1] == index[:, 0] + 32).all())


@needs_screen
def test_vectors_waiting_for_float32_are_offered_before_a_later_whole_step():
    """Row 0's best (reference 3200) is queued alone for float32; its twin 32 references on, one step
    of the AVX-512 walk later, is scored in a whole step with the other rows' bests (6 vectors:
    kWholeStepVectors): the queued one must enter first (ties: the lowest index)."""
    generator = torch.Generator().manual_seed(0)
    query, reference = torch.randn(6, 32, generator=generator), 0.1 * torch.randn(4096, 32, generator=generator)
    reference[3200] = reference[3232] = 2 * query[0]
    reference[3233:3238] = 2 * query[1:]
    screened = fused(query, reference, "dot", window=screening.screen_window(query, reference, None, "dot"))
    assert screened[1][:, 0].tolist() == [3200, 3233, 3234, 3235, 3236, 3237]


@needs_screen
@pytest.mark.parametrize("metric", ["dot", "l2"])
@pytest.mark.parametrize("k", [1, 3])
def test_near_ties_go_to_the_float32_winner(metric, k):
    """Twins a bfloat16 dot product cannot tell apart, the worse one first, among filler."""
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(16, 32, generator=generator)
    offsets = torch.nn.functional.normalize(torch.randn(2, 16, 32, generator=generator), dim=2)
    winners, twins = query + 0.02 * offsets[0], query + 0.0201 * offsets[1]
    filler = torch.randn(1500, 32, generator=generator) * (1e-3 if metric == "dot" else 3)
    reference = torch.cat([twins, filler[:700], winners, filler[700:]])
    screened_and_walked(query, reference, metric, k)


@needs_screen
def test_crowded_row_tiles_walk():
    """Near-duplicate features: almost every screened vector would be scored again, so the row
    tiles walk in float32 after the first sub-block."""
    centers = torch.randn(4, 32)
    query = centers[torch.arange(60) % 4] + 1e-4 * torch.randn(60, 32)
    reference = centers[torch.arange(6000) % 4] + 1e-4 * torch.randn(6000, 32)
    assert screened_and_walked(query, reference, "cosine", 4) > 0.9


@needs_screen
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30, 3.4e38])
def test_a_query_row_it_cannot_bound_walks_with_its_tile(bad):
    """3.4e38 is a float32 number but inf in bfloat16; 1e30 squared overflows nothing in float64
    but its bound reaches 2^90. Row 5's tile (rows 0-5) walks; the others stay screened."""
    generator = torch.Generator().manual_seed(16)
    reference, query = torch.randn(2000, 16, generator=generator), torch.randn(60, 16, generator=generator)
    query[5, 3] = bad
    assert torch.isinf(screening.screen_window(query, reference, None, "dot")).tolist() == [i == 5 for i in range(60)]
    assert screened_and_walked(query, reference, "dot") < 0.5


@needs_screen
@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), 3.4e38])
def test_a_reference_it_cannot_bound_sends_every_row_to_the_walk(bad):
    reference, query = torch.randn(2000, 16), torch.randn(30, 16)
    reference[7, 3] = bad
    assert torch.isinf(screening.screen_window(query, reference, None, "dot")).all()
    assert screened_and_walked(query, reference, "dot") == 1
    ignored = torch.zeros(2000, dtype=torch.bool)
    ignored[7] = True  # an ignored one bounds nothing
    assert torch.isfinite(screening.screen_window(query, reference, ignored, "dot")).all()


@needs_screen
def test_nan_and_inf_references_never_match_under_cosine():
    generator = torch.Generator().manual_seed(4)
    query, reference = torch.randn(30, 16, generator=generator), torch.randn(2000, 16, generator=generator)
    reference[[7, 1500]] = float("nan")
    reference[[8, 1501], 2] = float("inf")
    screened_and_walked(query, reference, "cosine", 4)
    index = fused(query, reference, "cosine", 4, window=screening.screen_window(query, reference, None, "cosine"))[1]
    assert not torch.isin(index, torch.tensor([7, 8, 1500, 1501])).any()


@needs_screen
def test_slots_beyond_the_matchable_references_get_minus_one():
    ignored = torch.ones(1000, dtype=torch.bool)
    ignored[[3, 400, 777]] = False
    query, reference = torch.randn(5, 8), torch.randn(1000, 8)
    screened_and_walked(query, reference, "l2", 6, ignored)
    result = fused(query, reference, "l2", 6, ignored, screening.screen_window(query, reference, ignored, "l2"))
    assert (result[1][:, :3] >= 0).all() and (result[1][:, 3:] == -1).all()


@needs_screen
@pytest.mark.parametrize("metric", METRICS)
def test_public_match_screens_and_agrees_with_the_oracle(metric, monkeypatch):
    monkeypatch.setattr(screening, "MIN_WORK", 0)
    calls = []
    topk_walk = cpu_topk.topk_walk
    monkeypatch.setattr(cpu_topk, "topk_walk", lambda *args: calls.append(args[-1]) or topk_walk(*args))
    query, reference = torch.randn(2, 24, 6, 5), torch.randn(2500, 24)
    result = refmatch.match(query, reference, metric=metric, k=3, backend="torch")
    assert calls and calls[0] is not None, "the walk was given a window"
    rows = query.permute(0, 2, 3, 1).reshape(-1, 24)
    assert_matches_oracle(refmatch.match(rows, reference, metric=metric, k=3, backend="torch"), rows, reference,
                          metric, k=3)
    assert result.index.shape == (2, 3, 6, 5)


@needs_screen
def test_screen_applies_only_where_it_pays(monkeypatch):
    rows, reference = torch.empty(8192, 128), torch.empty(65536, 128)
    assert screening.screening_applies(rows, reference, 1)
    assert screening.screening_applies(rows, reference, screening.MAX_K)
    assert not screening.screening_applies(rows, reference, screening.MAX_K + 1)
    assert not screening.screening_applies(rows[:16], reference, 1)
    assert screening.screening_applies(rows[:16], reference, 1, screen=True)  # forced, for tests
    for unscreenable in [(rows.double(), reference.double(), 1), (rows[:0], reference, 1),
                         (rows, reference, screening.MAX_K + 1), (rows, reference[:0], 1)]:
        assert not screening.screening_applies(*unscreenable, screen=True)
    with cpu_topk.forced("avx2"):  # the screen runs at AVX-512 width
        assert not screening.screening_applies(rows, reference, 1)
    monkeypatch.setenv("REFMATCH_BF16_SCREEN", "0")
    assert not screening.screening_applies(rows, reference, 1)
    from refmatch.backends.torch_backend import TorchBackend
    assert TorchBackend.status(None)[1].endswith("the bfloat16 screen of float32 calls is off (REFMATCH_BF16_SCREEN=0)")


@needs_screen
def test_a_window_needs_the_avx512_width_and_a_bound_per_row():
    query, reference = torch.randn(7, 8), torch.randn(40, 8)
    for bad in [torch.ones(6), torch.ones(7, 1), -torch.ones(7)]:  # the native pass reads 7 by pointer
        with pytest.raises(ValueError, match=r"window must be \[N\] = \[7\] non-negative bounds"):
            fused(query, reference, "dot", window=bad)
    module = cpu_topk.native_module()
    state = torch.full((4, 1), float("-inf")), torch.full((4, 1), -1, dtype=torch.int32)
    query, window = torch.randn(4, 8), torch.ones(4)
    with pytest.raises(ValueError, match="window"):
        module.cpu_topk_rows("avx2", query.data_ptr(), 4, 8, query.data_ptr(), 4, 0, 1.0, 0, 1,
                             state[0].data_ptr(), state[1].data_ptr(), 0, 4, window.data_ptr())


@needs_screen
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("grouped", [True, False])
def test_classwise_takes_one_screened_match_per_class(metric, grouped):
    """Class 3 empty, some rows ignored; per class as the oracle's best."""
    generator = torch.Generator().manual_seed(5)
    query, reference = torch.randn(60, 16, generator=generator), torch.randn(2500, 16, generator=generator)
    labels = torch.randint(0, 3, (2500,), generator=generator)
    labels = labels.sort().values if grouped else labels
    ignored = torch.rand(2500, generator=generator) < 0.1
    scores = classwise_chunked(query.T[None, :, :, None], reference, labels, ignored, 4, metric, screen=True)
    assert stored_by_class(labels, ignored) == grouped
    dense = dense_scores(query, reference, metric)
    for cls in range(3):
        columns = dense[:, (labels == cls) & ~ignored]
        expected = columns.min(1).values if metric == "l2" else columns.max(1).values
        torch.testing.assert_close(scores[:, cls].double(), expected, atol=1e-4, rtol=1e-5)
    assert (scores[:, 3] == (float("inf") if metric == "l2" else float("-inf"))).all()


@needs_screen
def test_info_names_a_bad_screen_setting_instead_of_failing(monkeypatch):
    """refmatch info stopped at the error, the one time its report was needed."""
    from refmatch.backends import torch_backend

    monkeypatch.setenv("REFMATCH_BF16_SCREEN", "off")
    assert torch_backend.TorchBackend.status(None)[1].endswith(
        "float32 calls raise: REFMATCH_BF16_SCREEN must be one of '1', '0', got 'off'")
    with pytest.raises(ValueError, match="REFMATCH_BF16_SCREEN"):
        match_chunked(torch.randn(1, 8, 4, 4), torch.randn(50, 8), None, 1, "dot")
