"""Semantics every backend shares: ties, NaN, overflow, labels, shapes (tracing and compile: test_match_tracing)."""
import pytest
import torch

import refmatch
from conftest import BACKENDS, DEVICE
from oracle import assert_matches_oracle

pytestmark = pytest.mark.usefixtures("both_cpu_walks")  # the CPU fused top-k and the torch walk


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_exact_ties_go_to_lowest_index(backend, metric):
    reference = torch.randn(1300, 8, device=DEVICE)  # more than one block of 512 (the CPU's) and of Triton's
    query = torch.randn(5, 8, device=DEVICE)
    scale = {"cosine": 2.0, "dot": 100.0, "l2": 1.0}[metric]  # makes the copies the best
    reference[[1100, 3, 700, 1299]] = scale * query[0]  # ties in different tiles; 3 is lowest
    result = refmatch.match(query, reference, metric=metric, backend=backend)
    assert result.index[0].item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_refs", [40, 256])  # a partial tile, and only full ones (Triton masks no NaN there)
def test_nan_never_wins_and_empty_rows_get_minus_one(backend, num_refs):
    reference = torch.randn(num_refs, 8, device=DEVICE)
    reference[[0, 17]] = float("nan")
    labels = torch.arange(num_refs, device=DEVICE)
    query = torch.randn(3, 8, device=DEVICE)
    query[1] = float("nan")
    result = refmatch.match(query, reference, labels, metric="dot", backend=backend)
    assert result.index[1].item() == -1 and result.label[1].item() == -1
    assert result.score[1].item() == float("-inf")
    kept = torch.ones(num_refs, dtype=torch.bool)
    kept[[0, 17]] = False
    clean = refmatch.match(query[[0, 2]], reference[kept], metric="dot", backend="torch")
    assert result.index[[0, 2]].tolist() == kept.nonzero()[:, 0][clean.index.cpu()].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_without_finite_distance_is_inf(backend):
    reference = torch.full((5, 4), float("nan"), device=DEVICE)
    result = refmatch.match(torch.randn(2, 4, device=DEVICE), reference, metric="l2", backend=backend)
    assert (result.index == -1).all() and (result.score == float("inf")).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dot_products_of_inf_are_matches_and_nan_ones_are_skipped(backend):
    # q.r is NaN (inf * 0) for reference 0, which must not hide reference 1's +inf (a match:
    # the best there is); the second row is finite.
    query = torch.tensor([[float("inf"), 1.0], [1.0, 2.0]], device=DEVICE)
    reference = torch.tensor([[0.0, 1.0], [1.0, 0.0]], device=DEVICE)
    result = refmatch.match(query, reference, metric="dot", backend=backend)
    assert result.index.tolist() == [1, 0] and result.score.tolist() == [float("inf"), 2.0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_a_query_row_holding_inf_matches_nothing(backend, metric):
    # cosine and l2 of a row with Inf are NaN or the worst score: no match, as a NaN row.
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], device=DEVICE)
    query = torch.tensor([[float("inf"), 1.0], [1.0, 0.1]], device=DEVICE)
    result = refmatch.match(query, reference, torch.tensor([2, 1, 0], device=DEVICE), metric=metric,
                            backend=backend)
    worst = float("inf") if metric == "l2" else float("-inf")
    assert result.index.tolist() == [-1, 0] and result.label.tolist() == [-1, 2]
    assert result.score[0].item() == worst
    classwise = refmatch.classwise_max(query, reference, torch.tensor([2, 1, 0], device=DEVICE), 3, metric=metric,
                                       backend=backend)
    assert (classwise[0] == worst).all() and classwise[1].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy GEMM
def test_cosine_of_a_query_row_whose_norm_overflows_matches_nothing(backend, k):
    """Finite entries around 1e38 whose norm passes float32's range: its products overflowed
    too, so the row matches nothing in any slot, as a row holding Inf (k = 2 returned the slots
    [-1, 0] unsorted, its finite products read as cosine 0)."""
    reference = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]], device=DEVICE)
    query = torch.tensor([[3e38, 3e38, 3e38, 3e38], [2e38, 0.0, 2e38, 0.0]], device=DEVICE)
    result = refmatch.match(query, reference, k=k, metric="cosine", backend=backend)
    index, score = result.index.reshape(2, k), result.score.reshape(2, k)
    assert (index[0] == -1).all() and (score[0] == float("-inf")).all()
    if backend == "torch":  # the fused kernels' q.r overflows there, as the README says
        assert index[1, 0] in (0, 1) and score[1, 0].item() == pytest.approx(0.5 ** 0.5)  # |q| = 2.8e38 fits


def test_cosine_reference_rows_whose_norm_overflows_match_nothing():
    """A reference row such as [2e38, 2e38, 2e38, 0] normalised to zeros and scored 0, beating
    the true best of negative cosines; now it never matches, as a reference holding Inf."""
    reference = torch.tensor([[2e38, 2e38, 2e38, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    query = torch.tensor([[-1.0, -0.5, 0.0, 0.0]])
    result = refmatch.match(query, reference, k=3, metric="cosine", backend="torch")
    assert result.index.tolist() == [[1, 2, -1]]
    scores = refmatch.classwise_max(query, reference, torch.tensor([0, 1, 1]), 2, backend="torch")
    assert scores[0, 0] == float("-inf") and scores[0, 1] > 0.8


def test_l2_centres_banks_whose_float32_moments_overflow():
    """A tight cluster around 1e20: the bank's sum of squares passes float32's range, which kept
    it from being shifted, so every distance overflowed and no query matched."""
    generator = torch.Generator().manual_seed(0)
    reference = 1e20 + 1e18 * torch.randn(64, 4, generator=generator)
    query = reference[:8] + 1e17 * torch.randn(8, 4, generator=generator)
    result = refmatch.match(query, reference, metric="l2", backend="torch")
    assert result.index.tolist() == list(range(8)) and result.score.isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("bad_rows", ["none", "not finite", "ignored"])
def test_l2_of_features_with_a_large_offset(backend, k, bad_rows):
    # Rows around 100 with unit spread: the GEMM form |q|^2 - 2 q.r + |r|^2 cancels 4 of
    # float32's 7 digits (negative distances, 3 % wrong neighbours before the fix). Rows
    # that never match must not spoil the shift: NaN or Inf (a NaN mean turned it off) and
    # ignored rows far away (zero rows halved the mean: half the neighbours wrong).
    generator = torch.Generator().manual_seed(0)
    reference = (100 + torch.randn(400, 16, generator=generator)).to(DEVICE)
    query = torch.cat([reference[:20] + 1e-3 * torch.randn(20, 16, generator=generator).to(DEVICE),
                       (100 + torch.randn(60, 16, generator=generator)).to(DEVICE)])
    classes = torch.arange(400, device=DEVICE) % 3
    never = torch.zeros(400, dtype=torch.bool)
    if bad_rows == "not finite":
        reference[250, 3], reference[399] = float("inf"), float("nan")
        never[[250, 399]] = True
    elif bad_rows == "ignored":
        reference[300:], classes[300:] = 0.0, 255
        never[300:] = True
    ignore_index = 255 if bad_rows == "ignored" else None
    result = refmatch.match(query, reference, classes, k=k, metric="l2", backend=backend, ignore_index=ignore_index)
    score, index = (result.score, result.index) if k > 1 else (result.score[:, None], result.index[:, None])
    exact = torch.cdist(query.double(), reference.double()).square().cpu()
    exact[:, never] = float("inf")
    assert torch.equal(index.cpu(), exact.topk(k, dim=1, largest=False).indices)
    assert (score >= 0).all() and (score[:, 1:] >= score[:, :-1]).all()
    torch.testing.assert_close(score.double().cpu(), exact.gather(1, index.cpu()), rtol=1e-5, atol=0)
    classwise = refmatch.classwise_max(query, reference, classes, 3, metric="l2", backend=backend,
                                       ignore_index=ignore_index)
    per_class = torch.stack([exact[:, classes.cpu() == c].min(dim=1).values for c in range(3)], dim=1)
    torch.testing.assert_close(classwise.double().cpu(), per_class, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_l2_distances_of_maps_equal_those_of_their_rows(layout):
    # Maps are read a chunk of rows at a time (contiguous) or in place (channels last).
    maps = torch.randn(2, 6, 5, 7, device=DEVICE)
    maps = maps.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else maps
    reference = torch.randn(40, 6, device=DEVICE)
    from_maps = refmatch.match(maps, reference, k=3, metric="l2", backend="torch")
    rows = refmatch.match(maps.permute(0, 2, 3, 1).reshape(-1, 6), reference, k=3, metric="l2", backend="torch")
    assert torch.equal(from_maps.index.permute(0, 2, 3, 1).reshape(-1, 3), rows.index)
    assert torch.equal(from_maps.score.permute(0, 2, 3, 1).reshape(-1, 3), rows.score)


def test_l2_shift_holds_with_an_outlier_query_near_0():
    """One query row near 0 among queries around 100 turned a per-row check's shift off for the
    whole call: 7 of 2001 rows got a wrong neighbour (one shift per call matches all)."""
    generator = torch.Generator().manual_seed(0)
    reference = (100 + torch.randn(4000, 16, generator=generator)).to(DEVICE)
    query = torch.cat([100 + torch.randn(2000, 16, generator=generator), 0.01 * torch.randn(1, 16)]).to(DEVICE)
    exact = torch.cdist(query.double(), reference.double()).argmin(1)
    assert torch.equal(refmatch.match(query, reference, metric="l2", backend="torch").index, exact)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_against_identical_references_with_an_offset(backend):
    # Zero spread: the shift is their mean itself (a grid step of 0 once made it infinite).
    query = (100 + torch.randn(5, 8)).to(DEVICE)
    for reference in (100 + torch.randn(1, 8), torch.tensor([[7.0, 300.0, 5.0, 1.0] * 2]).repeat(4, 1)):
        reference = reference.to(DEVICE)
        result = refmatch.match(query, reference, metric="l2", backend=backend)
        assert (result.index == 0).all()
        exact = (query.double() - reference[0].double()).square().sum(1)
        torch.testing.assert_close(result.score.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_of_offset_integer_features_keeps_exact_ties(backend):
    # Raw intensities: integers far from 0. The shift that fixes the cancellation keeps
    # them integers, so duplicated rows still tie exactly and the lowest index wins.
    generator = torch.Generator().manual_seed(1)
    reference = 200 + torch.randint(0, 5, (150, 9), generator=generator).float()
    reference = torch.cat([reference, reference]).to(DEVICE)  # row i and row 150 + i tie
    query = (200 + torch.randint(0, 5, (40, 9), generator=generator).float()).to(DEVICE)
    result = refmatch.match(query, reference, k=2, metric="l2", backend=backend)
    exact = (query.double()[:, None] - reference.double()[None]).square().sum(-1)
    best = exact.min(dim=1, keepdim=True).values
    lowest = torch.where(exact == best, torch.arange(300, device=DEVICE), 300).min(dim=1).values
    assert torch.equal(result.index[:, 0], lowest) and (result.index[:, 0] < 150).all()
    assert torch.equal(result.score[:, 0].double(), best[:, 0])


@pytest.mark.parametrize("rows, twin", [(700, 600), (70000, 65541)])  # past a GEMM block; past a 2^22 chunk
def test_cosine_twins_tie_beside_a_row_whose_norm_overflows(rows, twin):
    """A row of Inf (or of 1e20) next to row 0's twin sent their whole chunk's norms through
    float64, an ulp from row 0's float32 norm, and the twin outranked row 0 for half the queries."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(rows, 64, generator=generator)
    reference[twin] = reference[0]
    queries = reference[0] + 1e-3 * torch.randn(8, 64, generator=generator)
    for value in (float("inf"), 1e20):
        reference[twin + 1] = value
        assert refmatch.match(queries, reference, backend="torch").index.tolist() == [0] * 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_ignores_the_scale_of_rows_whose_squared_norm_overflows(backend):
    # Norms above 1.8e19 square to inf in float32: the reference term 1/|r| was 0 and the
    # public score of a query that large divided by inf. (Fused kernels take q.r before
    # 1/|r|, so |q| |r| must stay below float32's 3.4e38.)
    generator = torch.Generator().manual_seed(3)
    reference, query = torch.randn(300, 8, generator=generator), torch.randn(4, 8, generator=generator)
    expected = refmatch.match(query.double(), reference.double(), metric="cosine", backend="torch")
    for reference_scale, query_scale in ((1e30, 1.0), (1.0, 1e25)):
        scaled_reference, scaled_query = reference.clone(), query.clone()
        scaled_reference[::2] *= reference_scale
        scaled_query[0] *= query_scale
        result = refmatch.match(scaled_query.to(DEVICE), scaled_reference.to(DEVICE), metric="cosine",
                                backend=backend)
        assert result.index.tolist() == expected.index.tolist()
        torch.testing.assert_close(result.score.cpu().double(), expected.score, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_of_scaled_copies_stays_within_minus_one_and_one(backend):
    """Rows matched against scaled copies of themselves: 1/|r| and 1/|q| round, and 137 of
    512 scores came out as 1.0000002 (acos of them is NaN), 15 of 64 negated copies as -1.0000002."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(512, 16, generator=generator)
    reference = torch.cat([query * 3.7, -query[:64] * 0.3]).to(DEVICE)
    result = refmatch.match(query.to(DEVICE), reference, metric="cosine", backend=backend)
    assert result.index.cpu().equal(torch.arange(512)) and result.score.max() <= 1
    torch.testing.assert_close(result.score.cpu(), torch.ones(512), rtol=0, atol=1e-6)
    negated = refmatch.classwise_max(query[:64].to(DEVICE), reference[512:], torch.arange(64, device=DEVICE), 64,
                                     metric="cosine", backend=backend).cpu()
    assert negated.min() >= -1
    torch.testing.assert_close(negated.diagonal(), -torch.ones(64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_maps_give_image_shaped_results(backend):
    maps = torch.randn(2, 6, 5, 4, device=DEVICE)
    reference = torch.randn(30, 6, device=DEVICE)
    labels = torch.randint(0, 4, (30,), device=DEVICE)
    result = refmatch.match(maps, reference, labels, backend=backend)
    assert result.score.shape == result.index.shape == result.label.shape == (2, 5, 4)
    rows = maps.permute(0, 2, 3, 1).reshape(-1, 6)
    flat = refmatch.match(rows, reference, labels, backend="torch")
    assert torch.equal(result.index.reshape(-1), flat.index)
    assert_matches_oracle(result, maps, reference, "cosine", labels=labels)


def test_topk_maps_are_b_k_h_w():
    maps = torch.randn(2, 6, 5, 4)
    result = refmatch.match(maps, torch.randn(30, 6), torch.zeros(30, dtype=torch.long), k=3)
    assert result.score.shape == result.index.shape == result.label.shape == (2, 3, 5, 4)
    assert (result.score[:, 0] >= result.score[:, 1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int32, torch.int64])
def test_labels_come_back_int64_and_none_without_labels(backend, label_dtype):
    query, reference = torch.randn(5, 8, device=DEVICE), torch.randn(12, 8, device=DEVICE)
    labels = torch.arange(12, device=DEVICE).remainder(3).to(label_dtype)
    result = refmatch.match(query, reference, labels, k=2, backend=backend)
    assert result.label.dtype == torch.int64 and torch.equal(result.label, labels.long()[result.index])
    assert refmatch.match(query, reference, k=2, backend=backend).label is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_of_zero_rows_is_zero(backend):
    """As F.normalize: a zero query row scores 0 with every reference, and a zero reference 0 with
    every query; -inf is not its score, so the zero row still matches (the lowest index)."""
    query, reference = torch.randn(4, 8, device=DEVICE), -torch.rand(6, 8, device=DEVICE)
    query[1] = 0
    query[2] = reference[0].abs()  # all positive: every cosine but the zero reference's is negative
    reference[3] = 0
    result = refmatch.match(query, reference, metric="cosine", backend=backend)
    assert result.score[1] == 0 and result.index[1] == 0
    assert result.score[2] == 0 and result.index[2] == 3


def test_empty_query_gives_empty_results():
    result = refmatch.match(torch.randn(0, 8), torch.randn(5, 8))
    assert result.score.shape == (0,) and result.index.shape == (0,)
