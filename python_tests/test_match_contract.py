"""Semantics every backend shares: ties, NaN, labels, shapes, strides, compile."""
import pytest
import torch

import refmatch
from conftest import HAS_CUDA, INTERPRETING
from oracle import assert_matches_oracle

DEVICE = "cuda" if HAS_CUDA else "cpu"
FUSED = ["triton"] if (HAS_CUDA or INTERPRETING) else []
BACKENDS = ["torch"] + FUSED


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_exact_ties_go_to_lowest_index(backend, metric):
    reference = torch.randn(300, 8, device=DEVICE)
    query = torch.randn(5, 8, device=DEVICE)
    scale = {"cosine": 2.0, "dot": 100.0, "l2": 1.0}[metric]  # makes the copies the best
    reference[[150, 3, 299]] = scale * query[0]  # ties in different tiles; 3 is lowest
    result = refmatch.match(query, reference, metric=metric, backend=backend)
    assert result.index[0].item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_never_wins_and_empty_rows_get_minus_one(backend):
    reference = torch.randn(40, 8, device=DEVICE)
    reference[[0, 17]] = float("nan")
    labels = torch.arange(40, device=DEVICE)
    query = torch.randn(3, 8, device=DEVICE)
    query[1] = float("nan")
    result = refmatch.match(query, reference, labels, metric="dot", backend=backend)
    assert result.index[1].item() == -1 and result.label[1].item() == -1
    assert result.score[1].item() == float("-inf")
    kept = torch.ones(40, dtype=torch.bool)
    kept[[0, 17]] = False
    clean = refmatch.match(query[[0, 2]], reference[kept], metric="dot", backend="torch")
    assert result.index[[0, 2]].tolist() == kept.nonzero()[:, 0][clean.index.cpu()].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_without_finite_distance_is_inf(backend):
    reference = torch.full((5, 4), float("nan"), device=DEVICE)
    result = refmatch.match(torch.randn(2, 4, device=DEVICE), reference, metric="l2", backend=backend)
    assert (result.index == -1).all() and (result.score == float("inf")).all()


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


def test_empty_query_gives_empty_results():
    result = refmatch.match(torch.randn(0, 8), torch.randn(5, 8))
    assert result.score.shape == (0,) and result.index.shape == (0,)


def test_results_carry_no_gradient():
    query = torch.randn(4, 8, requires_grad=True)
    result = refmatch.match(query, torch.randn(6, 8))
    assert not result.score.requires_grad


def test_opcheck_each_registered_op():
    maps = torch.randn(2, 8, 3, 5, device=DEVICE)
    reference = torch.randn(20, 8, device=DEVICE)
    ignored = torch.arange(20, device=DEVICE) % 3 == 0
    labels = torch.randint(0, 3, (20,), device=DEVICE)
    for backend in BACKENDS:
        match_op = getattr(torch.ops.refmatch, f"match_{backend}")
        classwise_op = getattr(torch.ops.refmatch, f"classwise_max_{backend}")
        torch.library.opcheck(match_op, (maps, reference, None, 1, "l2"))
        torch.library.opcheck(match_op, (maps, reference, ignored, 3, "cosine"))
        torch.library.opcheck(classwise_op, (maps, reference, labels, ignored, 3, "dot"))


def test_compile_fullgraph():
    @torch.compile(fullgraph=True, backend="aot_eager")  # traces the fake impls
    def pseudo_labels(features, bank, bank_labels):
        # The label check's host read is skipped while compiling.
        return refmatch.match(features, bank, bank_labels, metric="cosine", ignore_index=2).label + 0

    maps = torch.randn(2, 8, 3, 5)
    bank, bank_labels = torch.randn(20, 8), torch.randint(0, 3, (20,))
    expected = refmatch.match(maps, bank, bank_labels, ignore_index=2).label
    assert torch.equal(pseudo_labels(maps, bank, bank_labels), expected)
