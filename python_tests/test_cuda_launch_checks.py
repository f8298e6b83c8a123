"""The CUDA binding's argument checks without a GPU: bad launch arguments and plan inputs raise
before any CUDA call, and a missing device raises the CUDA error."""
import re

import pytest
import torch

_C = pytest.importorskip("refmatch._C", reason="refmatch._C is not built")
needs_cuda_build = pytest.mark.skipif(not _C.build_info()["cuda"], reason="_C built without CUDA")


def launch_args(**overrides):
    args = dict(query=1 << 20, dtype=2, batch=1, dim=8, height=4, width=1, query_strides=(32, 1, 8, 8),
                reference=1 << 21, num_refs=5, reference_strides=(8, 1), ref_stat=1 << 22, metric=1,
                allow_tf32=False, out_score=1 << 23, out_index=1 << 24, splits=1, partial_score=0,
                partial_index=0, stream=0, device=0)
    args.update(overrides)
    return args


@needs_cuda_build
@pytest.mark.parametrize("overrides, message", [
    ({"dtype": 7}, "dtype code"), ({"metric": 3}, "metric code"), ({"dim": 0}, "dim"),
    ({"num_refs": 0}, "num_refs"), ({"splits": 0}, "splits"), ({"splits": 2}, "workspaces"),
    ({"ref_stat": 0}, "ref_stat"), ({"query_strides": (1, -1, 1, 1)}, "strides"),
    ({"hopper_rows": 64}, "hopper_rows"), ({"ablate": 4}, "ablate must be 0, 1"), ({"ablate": -1}, "ablate"),
    ({"batch": 2 ** 62, "height": 4}, "batch \\* height \\* width overflows int64"),  # wrapped to 0 rows before
])
def test_bad_launch_arguments_raise_value_error_before_cuda(overrides, message):
    with pytest.raises(ValueError, match=message):
        _C.match_argmax(**launch_args(**overrides))


@needs_cuda_build
def test_launch_without_device_raises_cuda_error():
    if torch.cuda.is_available():
        pytest.skip("a device is present")
    count, error = _C.cuda_device_count()
    with pytest.raises(RuntimeError, match=re.escape(error)):
        _C.match_argmax(**launch_args())
    with pytest.raises(RuntimeError, match=re.escape(error)):
        _C.match_splits(128, 1000, 128, 2, False, 0, 1 << 20, 128, 1)


@needs_cuda_build
@pytest.mark.parametrize("rows", [64, 384])
def test_bad_hopper_rows_raise_before_cuda_in_every_entry_point(rows):
    with pytest.raises(ValueError, match="hopper_rows"):
        _C.match_splits(128, 1000, 128, 2, False, 0, 1 << 20, 128, 1, hopper_rows=rows)
    with pytest.raises(ValueError, match="hopper_rows"):
        _C.match_kernel_name(128, 2, False, 0, rows, False, 1 << 20, 128, 1, 1000)


@pytest.mark.parametrize("call, message", [
    (lambda: _C.hopper_layout(0, 2, 16, 232448), "dim must be >= 1, got 0"),
    (lambda: _C.match_layout(-1000, 2, 232448), "dim must be >= 1, got -1000"),
    (lambda: _C.match_layout(64, 3, 232448), "element_bytes must be 2 or 4, got 3"),
    (lambda: _C.plan_match_splits(10, 100, 4, block_m=0), "block_m must be >= 1, got 0"),
    (lambda: _C.plan_match_splits(10, 100, 4, block_n=0), "block_n must be >= 1, got 0"),
    (lambda: _C.match_refs_per_split(100, 0), "splits must be >= 1, got 0"),
])
def test_plan_helpers_refuse_what_they_would_divide_by(call, message):
    """A zero divisor in these host helpers killed the interpreter (SIGFPE); now a ValueError."""
    with pytest.raises(ValueError, match=message):
        call()


@needs_cuda_build
def test_empty_query_launches_nothing():  # made-up pointers: a CUDA call would fail (no device) or fault
    _C.match_argmax(**launch_args(batch=0))


@pytest.mark.parametrize("reference, stat_rows, message", [
    (torch.zeros(40, 8, dtype=torch.float16), 40, r"reference must be \[M, 8\] torch.bfloat16 on cpu like the query"),
    (torch.zeros(40, 6, dtype=torch.bfloat16), 40, r"reference must be \[M, 8\]"),
    (torch.zeros(40, 8, dtype=torch.bfloat16), 39, "cosine needs a per-reference term for each of the M=40 rows"),
])
def test_the_launch_wrapper_refuses_what_the_kernel_would_misread(reference, stat_rows, message):
    """Checked before any CUDA call: a bank of another dtype is read as the query's, a short stat past its end."""
    from refmatch.backends.cuda_backend import run_kernel
    query = torch.zeros(1, 8, 3, 1, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=message):
        run_kernel(query, reference, torch.ones(stat_rows), "cosine", torch.empty(3), torch.empty(3), splits=1)
