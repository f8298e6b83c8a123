"""refmatch._C: build info, and the shared tie/merge header run on the host."""
import shutil

import numpy as np
import pytest

_C = pytest.importorskip("refmatch._C", reason="refmatch._C is not built")


def reference_best(scores, indices):
    """Plain-Python statement of the tie rule over candidate lists."""
    best_score, best_index = -np.inf, -1
    for score, index in zip(scores, indices):
        if np.isnan(score) or score == -np.inf:
            continue
        if best_index < 0 or score > best_score or (score == best_score and index < best_index):
            best_score, best_index = score, index
    return best_score, best_index


def test_build_info():
    info = _C.build_info()
    assert set(info) == {"version", "compiler", "cuda", "cuda_archs", "cuda_runtime_version"}
    import refmatch
    assert info["version"] == refmatch.__version__
    if shutil.which("nvcc"):
        assert info["cuda"] and info["cuda_archs"]


def test_cuda_backend_reports_whether_it_has_a_device():
    import torch

    import refmatch
    if not _C.build_info()["cuda"]:
        pytest.skip("refmatch._C was built without CUDA")
    count, error = _C.cuda_device_count()
    if torch.cuda.is_available():  # the GPU suite's run
        assert count == torch.cuda.device_count() and not error
        return
    status = {s.name: s for s in refmatch.backends()}["cuda"]
    assert count == 0 and error
    assert "compiled for sm_" in status.reason and "no usable device" in status.reason


INSUFFICIENT_DRIVER = "CUDA driver version is insufficient for CUDA runtime version"


class RuntimeWithoutDevice:
    """A CUDA build of refmatch._C whose runtime reports the missing or too old driver."""

    def build_info(self):
        return {"cuda": True, "cuda_archs": "80,90a"}

    def cuda_device_count(self):
        return 0, INSUFFICIENT_DRIVER


@pytest.mark.parametrize("driver_loads, reason", [
    (False, f"no usable device: no CUDA driver or device found (CUDA error: {INSUFFICIENT_DRIVER})"),
    (True, f"no usable device: {INSUFFICIENT_DRIVER}"),
])
def test_cuda_status_tells_a_missing_driver_from_an_old_one(monkeypatch, driver_loads, reason):
    from refmatch.backends import cuda_backend

    monkeypatch.setattr(cuda_backend, "native_module", lambda: RuntimeWithoutDevice())
    monkeypatch.setattr(cuda_backend, "_driver_library_loads", lambda: driver_loads)
    uncached_status = cuda_backend._status.__wrapped__
    assert uncached_status() == (False, f"compiled for sm_80, sm_90a; {reason}")


def test_cuda_status_names_a_failed_build(monkeypatch, tmp_path):
    """setup.py leaves the reason of a failed optional build beside the package (pip hides it)."""
    from refmatch.backends import cuda_backend

    note = tmp_path / "_C_build_failed.txt"
    monkeypatch.setattr(cuda_backend, "native_module", lambda: None)
    monkeypatch.setattr(cuda_backend, "BUILD_FAILED_NOTE", note)
    uncached_status = cuda_backend._status.__wrapped__
    assert "reinstall with a C++ compiler" in uncached_status()[1]
    note.write_text("Command '['cmake', '--build']' returned non-zero exit status 1.\n")
    reason = uncached_status()[1]
    assert "its build failed (Command '['cmake', '--build']' returned non-zero" in reason and "pip install -v" in reason


@pytest.mark.parametrize("seed", range(5))
def test_merge_partial_bests_follows_tie_rule(seed):
    rng = np.random.default_rng(seed)
    splits, rows = 4, 300
    scores = rng.integers(-2, 3, (splits, rows)).astype(np.float32)  # many exact ties
    scores[rng.random((splits, rows)) < 0.1] = np.nan
    scores[rng.random((splits, rows)) < 0.1] = -np.inf
    indices = rng.permutation(splits * rows).reshape(splits, rows).astype(np.int64)
    indices[scores == -np.inf] = -1
    merged_scores, merged_indices = _C.merge_partial_bests(scores, indices)
    for row in range(rows):
        expected = reference_best(scores[:, row], indices[:, row])
        assert (merged_scores[row], merged_indices[row]) == expected


def reference_topk(scores, k):
    """Plain-Python top-k under the tie rule: finite scores by (score desc, index asc), then (-inf, -1)."""
    valid = sorted((-score, index) for index, score in enumerate(scores) if np.isfinite(score) or score == np.inf)
    kept = [(-negated, index) for negated, index in valid[:k]]
    return kept + [(-np.inf, -1)] * (k - len(kept))


def oriented(products, metric, stats):
    """The kernels' scores from their products, in float32: dot as is, cosine times 1/|r|, l2 2x - |r|^2."""
    return products if metric == 0 else products * stats if metric == 1 else np.float32(2) * products - stats


# The CUDA kernels' epilogues, run on the host by 32 threads as one warp (host_warp.h): each
# layout's tiling (mma.sync: a warp's 32 rows by 64-column tiles; wgmma: 16 rows of a 64-row
# block by 128 columns; wgmma-256: two such blocks), row padding (rows not a multiple of the
# warp's), column padding of the last tile, NaN and -inf that never win, +inf that does, ties.
@pytest.mark.parametrize("layout", ["mma.sync", "wgmma", "wgmma-256"])
@pytest.mark.parametrize("metric", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 8, 64])
def test_stream_tiles_runs_the_kernels_epilogues(layout, metric, k):
    rng = np.random.default_rng(100 * k + 10 * metric + len(layout))
    rows, cols = 37, 300  # 300 = 4 tiles of 64 + 44, or 2 of 128 + 44
    products = rng.integers(-3, 4, (rows, cols)).astype(np.float32)  # many exact ties
    products[rng.random(products.shape) < 0.15] = np.nan
    products[rng.random(products.shape) < 0.05] = -np.inf
    products[3] = np.nan  # a row with no finite score
    products[5, 250:] = np.inf
    stats = rng.integers(1, 4, cols).astype(np.float32)
    stats[::17] = np.nan  # ignored references: NaN terms never match
    lists_scores, lists_indices = _C.stream_tiles(products, layout, k, metric, stats if metric else None)
    assert lists_scores.shape == lists_indices.shape == (rows, k)
    with np.errstate(invalid="ignore"):
        scores = oriented(products, metric, stats)
    for row in range(rows):
        got = list(zip(lists_scores[row].tolist(), lists_indices[row].tolist()))
        assert got == reference_topk(scores[row], k), (row, got[:4])
    assert (lists_indices[3] == -1).all()


def test_stream_tiles_refuses_what_no_kernel_runs():
    with pytest.raises(ValueError, match="layout must be 'mma.sync', 'wgmma' or 'wgmma-256', got 'wmma'"):
        _C.stream_tiles(np.zeros((2, 3), np.float32), "wmma")
    with pytest.raises(ValueError, match="k must be in .1, 64."):
        _C.stream_tiles(np.zeros((2, 3), np.float32), "wgmma", 65)
    with pytest.raises(ValueError, match="cosine and l2 need stats .cols."):
        _C.stream_tiles(np.zeros((2, 3), np.float32), "wgmma", 1, 2, np.zeros(2, np.float32))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="equal shapes"):
        _C.merge_partial_bests(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="k must be"):
        _C.stream_tiles(np.zeros((2, 3), np.float32), "mma.sync", 0)
