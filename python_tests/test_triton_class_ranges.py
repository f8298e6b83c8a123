"""The Triton k = 1 kernel over given bank ranges (``range_maxima``), and the class-wise max
built on it, against the float64 oracle and against the per-class kernel that graph
capture falls back to. Interpreter-sized without a GPU."""
import pytest
import torch

import refmatch
from conftest import DEVICE, HAS_CUDA, INTERPRETING

pytestmark = pytest.mark.skipif(not (HAS_CUDA or INTERPRETING), reason="needs a CUDA device or TRITON_INTERPRET=1")


def _stat(reference, metric):
    from refmatch.backends.scoring import kernel_metric_and_stat

    return kernel_metric_and_stat(reference, metric)[1]


@pytest.mark.parametrize("metric", ["dot", "cosine", "l2"])
@pytest.mark.parametrize("starts", [
    [0, 70],                 # one range, the whole bank
    [0, 5, 5, 37, 38, 70],   # an empty range, ranges ending mid-tile, a one-row range
    [3, 33, 64],             # rows outside every range: never looked at
    [70, 70],                # nothing at all
])
def test_each_range_keeps_its_own_best(metric, starts):
    from refmatch.kernels.match_launch import range_maxima

    query, reference = torch.randn(9, 12, device=DEVICE), torch.randn(70, 12, device=DEVICE)
    reference[40] = float("nan")  # a NaN row never wins its range
    split_starts = torch.tensor(starts, device=DEVICE)
    partial = range_maxima(query.T[None, :, :, None], reference, _stat(reference, metric), metric, split_starts)
    assert partial.shape == (len(starts) - 1, 9)
    exact = _oriented_scores(query.cpu().double(), reference.cpu().double(), metric).nan_to_num(float("-inf"))
    plain = _oriented_scores(query.cpu(), reference.cpu(), metric).double().nan_to_num(float("-inf"))
    atol = 2 * (plain - exact)[exact.isfinite()].abs().max().item() + 1e-6  # 2x plain float32 torch's error
    for split, (begin, end) in enumerate(zip(starts, starts[1:])):
        expected = exact[:, begin:end].max(1).values if end > begin else torch.full((9,), float("-inf"), dtype=torch.float64)
        torch.testing.assert_close(partial[split].double().cpu(), expected, atol=atol, rtol=0)


def test_ranges_past_the_bank_are_clamped_into_it():
    """As the CUDA kernel: a range starting below 0 or ending past M reads only [0, M)."""
    from refmatch.kernels.match_launch import range_maxima

    query, reference = torch.randn(5, 8, device=DEVICE), torch.randn(40, 8, device=DEVICE)
    stat = _stat(reference, "dot")
    maps = query.T[None, :, :, None]
    clamped = range_maxima(maps, reference, stat, "dot", torch.tensor([-5, 10, 1000], device=DEVICE))
    valid = range_maxima(maps, reference, stat, "dot", torch.tensor([0, 10, 40], device=DEVICE))
    assert torch.equal(clamped, valid)


def _oriented_scores(query, reference, metric):
    """[N, M] scores as the kernel orients them: q.r, q.r / |r| or 2 q.r - |r|^2."""
    dots = query @ reference.T
    if metric == "cosine":
        return dots / reference.norm(dim=1)
    return 2 * dots - reference.square().sum(1) if metric == "l2" else dots


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("fallback", ["host_read_allowed", "_argmax_kernel_compiles"])
def test_class_ranges_agree_with_the_per_class_kernel(monkeypatch, metric, grouped, fallback):
    """The usual path (k = 1 over class ranges, several per class here) and the one taken under
    graph capture (no host read) or where the k = 1 kernel does not compile (sm_100 with
    triton < 3.9), C running maxima a row, give the same [N, C]."""
    from refmatch.backends import class_ranges as ranges_module, triton_backend

    query, reference = torch.randn(11, 9, device=DEVICE), torch.randn(300, 9, device=DEVICE)
    labels = torch.randint(0, 5, (300,), device=DEVICE)
    labels[labels == 3] = 4  # class 3 has no reference
    if grouped:
        labels = labels.sort().values
    monkeypatch.setattr(ranges_module, "MIN_RANGE_ROWS", 16)
    monkeypatch.setattr("refmatch.kernels.match_launch.fill_splits", lambda query, num_refs: 7)
    cut, class_ranges = [], ranges_module.class_ranges
    monkeypatch.setattr(ranges_module, "class_ranges", lambda *args: cut.append(class_ranges(*args)) or cut[-1])
    eager = refmatch.classwise_max(query, reference, labels, 5, metric=metric, backend="triton")
    assert cut and cut[0][1].shape[0] > 4, cut  # more ranges than classes
    monkeypatch.setattr(triton_backend, fallback, lambda tensor_or_device: False)
    captured = refmatch.classwise_max(query, reference, labels, 5, metric=metric, backend="triton")
    assert len(cut) == 1
    torch.testing.assert_close(eager, captured, atol=1e-5, rtol=1e-5)
    worst = float("inf") if metric == "l2" else float("-inf")
    assert (eager[:, 3] == worst).all() and eager[:, [0, 1, 2, 4]].isfinite().all()


def test_ranges_fill_the_device_and_stay_under_the_index_limit(monkeypatch):
    from refmatch.kernels import match_launch as match

    maps = torch.empty(1, 64, 8, 1, device="meta")
    monkeypatch.setattr(match, "MAX_SPLIT_REFS", 256)
    assert match.fill_splits(maps, 1000) >= 4  # ceil(1000 / 256): kept indices are int32 offsets in a range


@pytest.mark.parametrize("view", ["strided", "expanded"])
def test_the_per_class_kernel_reads_label_views(monkeypatch, view):
    """It read labels at unit stride: a strided view's maxima came from other rows' labels, and an
    expanded one (stride 0) read past its storage."""
    from refmatch.backends import triton_backend

    query, reference = torch.randn(4, 8, device=DEVICE), torch.randn(6, 8, device=DEVICE)
    labels = (torch.tensor([0, 9, 1, 9, 2, 9] * 2, device=DEVICE)[::2] if view == "strided"
              else torch.tensor([1], device=DEVICE).expand(6))
    expected = refmatch.classwise_max(query, reference, labels, 3, metric="dot", backend="torch")
    monkeypatch.setattr(triton_backend, "host_read_allowed", lambda tensor: False)  # as under graph capture
    torch.testing.assert_close(refmatch.classwise_max(query, reference, labels, 3, metric="dot", backend="triton"),
                               expected)
