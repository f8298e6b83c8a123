"""Which backend a call goes to, and why one declines: by card, triton and numpy version and
float32 precision (stand-ins for the card; no GPU needed)."""
import importlib
import warnings

import pytest
import torch

import refmatch

registry = importlib.import_module("refmatch.backends")  # refmatch.backends is also a function


@pytest.mark.parametrize("capability, declined", [((7, 5), True), ((7, 0), True), ((8, 0), False), ((8, 9), False)])
def test_cards_before_ampere_go_to_the_torch_backend(monkeypatch, capability, declined):
    """Before compute capability 8.0 the Triton kernel's bf16 and tf32 dots fall back to spilling
    FMAs: it declines the card by name, and auto picks the torch backend."""
    from refmatch.backends import triton_backend

    monkeypatch.setattr(triton_backend, "device_capability", lambda index: capability)
    monkeypatch.setattr(triton_backend.TritonBackend, "status", lambda self: (True, "stand-in"))
    problem = registry.MatchProblem(torch.device("cuda", 0), torch.bfloat16, 1, "cosine", 128)
    reason = registry._BACKENDS["triton"].decline_reason(problem)
    assert registry.select(problem, "auto").name == ("torch" if declined else "triton")
    if declined:
        assert reason == f"needs compute capability >= 8.0 (bf16 / tf32 tensor-core dots); cuda:0 has " \
                         f"{capability[0]}.{capability[1]}"
        with pytest.raises(ValueError, match="backend='triton' cannot run this call: needs compute capability"):
            registry.select(problem, "triton")
    else:
        assert reason is None


@pytest.mark.parametrize("dtype, precision, k, op, expected", [
    (torch.float32, "highest", 1, "match", "cuda"), (torch.float32, "high", 1, "match", "triton"),
    (torch.bfloat16, "highest", 1, "match", "triton"), (torch.float32, "highest", 8, "match", "triton"),
    (torch.float32, "highest", 1, "classwise", "triton")])
def test_auto_takes_the_cuda_kernel_for_exact_float32(monkeypatch, dtype, precision, k, op, expected):
    """float32 at torch's default "highest" precision, k = 1: Triton's exact dot spills, so auto
    takes the CUDA kernel's 3xTF32 where it is built; everything else stays on Triton."""
    for name in ("cuda", "triton"):
        monkeypatch.setattr(type(registry._BACKENDS[name]), "decline_reason", lambda self, problem: None)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        problem = registry.MatchProblem(torch.device("cuda", 0), dtype, k, "cosine", 128, op=op, num_classes=4)
        assert registry.select(problem, "auto").name == expected
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("dtype, metric, dim, k, setting, hopper, built, expected", [
    (torch.bfloat16, "cosine", 128, 1, None, True, True, "cuda"),
    (torch.bfloat16, "l2", 64, 1, None, True, True, "cuda"),
    (torch.bfloat16, "dot", 128, 1, None, True, True, "triton"),  # Triton's dot was faster
    (torch.float16, "cosine", 128, 1, None, True, True, "triton"),  # not timed
    (torch.bfloat16, "cosine", 256, 1, None, True, True, "triton"),  # not timed
    (torch.bfloat16, "cosine", 100, 1, None, True, True, "triton"),  # rows not 16-byte aligned: cp.async
    (torch.bfloat16, "cosine", 128, 8, None, True, True, "triton"),  # cuda top-k runs mma.sync
    (torch.bfloat16, "cosine", 128, 1, None, False, True, "triton"),  # no Hopper card or build
    (torch.bfloat16, "cosine", 128, 1, ("REFMATCH_CUDA_HOPPER_LOADS", "cp.async"), True, True, "triton"),
    (torch.bfloat16, "cosine", 128, 1, ("REFMATCH_CUDA_HOPPER_ROWS", "128"), True, True, "triton"),
    (torch.bfloat16, "cosine", 128, 1, ("REFMATCH_CUDA_HOPPER_QUERY", "registers"), True, True, "triton"),
    (torch.bfloat16, "cosine", 128, 1, None, True, False, "triton")])  # cuda not built: not even asked
def test_auto_takes_the_wgmma_kernel_where_it_beat_triton(monkeypatch, dtype, metric, dim, k, setting, hopper,
                                                          built, expected):
    """On Hopper the default wgmma kernel (TMA loads) beat Triton on l2 and cosine k = 1 in
    bfloat16 at D = 64 and 128; auto takes it there and only there."""
    from refmatch.backends import cuda_backend

    def hopper_enabled(device):
        assert built, "the Hopper check ran without a built cuda backend"
        return hopper

    for name in ("cuda", "triton"):
        monkeypatch.setattr(type(registry._BACKENDS[name]), "decline_reason", lambda self, problem: None)
    monkeypatch.setitem(registry._STATUS, "cuda", (built, "stand-in"))
    monkeypatch.setattr(cuda_backend, "hopper_enabled", hopper_enabled)
    for name in ("REFMATCH_CUDA_HOPPER_LOADS", "REFMATCH_CUDA_HOPPER_ROWS", "REFMATCH_CUDA_HOPPER_QUERY"):
        monkeypatch.delenv(name, raising=False)
    if setting is not None:
        monkeypatch.setenv(*setting)
    problem = registry.MatchProblem(torch.device("cuda", 0), dtype, k, metric, dim)
    assert registry.select(problem, "auto").name == expected


@pytest.mark.parametrize("version, k, op, declined", [
    ((3, 6), 1, "match", True), ((3, 9), 1, "match", False), ((3, 6), 8, "match", False),
    ((3, 6), 1, "classwise", False)])
def test_sm100_k1_needs_a_triton_that_compiles_it(monkeypatch, version, k, op, declined):
    """Triton 3.6 fails to compile the k = 1 kernel for sm_100 (TMEM layout pass; compiled ahead of
    time here); the backend declines those calls there, so auto runs another, and keeps the rest."""
    from refmatch.backends import triton_backend

    monkeypatch.setattr(triton_backend, "device_capability", lambda index: (10, 0))
    monkeypatch.setattr(triton_backend, "triton_version", lambda: version)
    monkeypatch.setattr(triton_backend.TritonBackend, "status", lambda self: (True, "stand-in"))
    problem = registry.MatchProblem(torch.device("cuda", 0), torch.bfloat16, k, "cosine", 128, op=op, num_classes=4)
    reason = registry._BACKENDS["triton"].decline_reason(problem)
    assert (reason is not None and "fails to compile the k = 1 kernel for sm_100" in reason) is declined


@pytest.mark.parametrize("version, interpreting, available", [
    ((2, 3), False, False), ((3, 7), True, False), ((3, 8), True, True), ((3, 6), False, True)])
def test_triton_versions_that_cannot_run_it_are_named(monkeypatch, version, interpreting, available):
    """triton < 3.0 lacks the kernel's tl.dot arguments; interpreters before triton 3.8 let NaN
    win their max reductions (wrong indices, no error): unavailable, by name."""
    from refmatch.backends import triton_backend

    monkeypatch.setattr(triton_backend, "triton_version", lambda: version)
    monkeypatch.setattr(triton_backend, "interpret_flag", lambda: interpreting)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ready, reason = triton_backend.TritonBackend.status(None)
    assert ready is available, reason
    if not available:
        assert f"triton {version[0]}.{version[1]}" in reason


def test_compiled_calls_keep_triton_for_exact_float32(monkeypatch):
    """torch.compile cannot trace the precision setting: under it auto keeps Triton first."""
    for name in ("cuda", "triton"):
        monkeypatch.setattr(type(registry._BACKENDS[name]), "decline_reason", lambda self, problem: None)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    problem = registry.MatchProblem(torch.device("cuda", 0), torch.float32, 1, "cosine", 128)
    assert registry.select(problem, "auto").name == "triton"


@pytest.mark.parametrize("setting, allowed", [("tf32", True), ("ieee", False)])
def test_tf32_follows_the_per_backend_precision_api(setting, allowed):
    """Once torch.backends.cuda.matmul.fp32_precision is set, torch refuses the legacy getter;
    the TF32 choice reads the new setting instead of raising."""
    from refmatch.backends.scoring import tf32_allowed

    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = setting
    try:
        assert tf32_allowed(torch.float32) is allowed and tf32_allowed(torch.bfloat16) is False
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def test_a_triton_that_does_not_import_is_unavailable_by_name(monkeypatch):
    """A broken triton install makes the backend unavailable with the import error, so auto
    falls back instead of raising it from every call."""
    from refmatch.backends import triton_backend

    def broken():
        raise ImportError("libcuda.so.1: cannot open shared object file")
    monkeypatch.setattr(triton_backend, "triton_version", broken)
    ready, reason = triton_backend.TritonBackend.status(None)
    assert not ready and reason == ("triton is installed but does not import: ImportError: libcuda.so.1: cannot "
                                    "open shared object file")


def test_a_backend_made_again_keeps_the_registered_ops():
    """A second torch.library.custom_op of one name replaced the first; once collected it freed the
    operator that the registry's backend still called: later matches crashed or raised
    std::bad_alloc (tests make TorchBackend() objects; the CI's unexplained failures)."""
    import gc

    from refmatch.backends.torch_backend import TorchBackend

    registered = registry._BACKENDS["torch"]
    again = TorchBackend()
    assert again.op is registered.op and again.classwise_op is registered.classwise_op
    del again
    gc.collect()
    query, reference = torch.randn(5, 4), torch.randn(9, 4)
    assert refmatch.match(query, reference, backend="torch").index.shape == (5,)
    assert refmatch.classwise_max(query, reference, torch.arange(9) % 3, 3, backend="torch").shape == (5, 3)


def test_fused_backends_choose_under_torch_compile_without_tracing_their_probes():
    """Dynamo could not trace the cuda backend's status (a pybind call into refmatch._C), so
    fullgraph=True failed for backend="cuda"; lru_caches it traces through warned."""
    def reasons(x):
        problem = registry.MatchProblem(x.device, x.dtype, 1, "cosine", x.shape[1])
        return [registry._BACKENDS[name].decline_reason(problem) for name in ("cuda", "triton")]

    def reason_lengths(x):
        return x + sum(len(reason or "") for reason in reasons(x))

    x = torch.zeros(2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = torch.compile(reason_lengths, fullgraph=True, backend="eager")(x)
    assert compiled[0, 0].item() == sum(len(reason or "") for reason in reasons(x))
