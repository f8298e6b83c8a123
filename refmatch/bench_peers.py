"""The methods ``refmatch bench`` times: the GEMM ceiling, PyTorch, refmatch, FAISS, KeOps, flash-kmeans.

Each method is a (metric, k) search returning indices [N] or [N, k]; a peer that
is not installed, or cannot run on the device, is listed with the reason.
"""
import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import refmatch
from refmatch.bench_keops import keops_rows


@dataclass
class Method:
    name: str
    metric: str                  # "dot", "l2" or "cosine"; "-" for the GEMM ceiling
    k: int
    run: Callable                # () -> indices [N] / [N, k], class-wise scores [N, C], or None (GEMM)
    flops: float
    skip: Optional[str] = None
    classwise: bool = False      # run returns class-wise scores [N, CLASSES], judged class by class
    baseline: Optional[Callable] = None  # the same backend's k = 1 dot, timed interleaved ("vs k=1")
    prepare: Optional[Callable] = None   # before the warm-up, untimed: a reason to skip, or None (KeOps)


def _faiss_methods(query, reference, flops, keep):
    try:
        import faiss
    except ImportError:
        hint = ("faiss-gpu wheels bring the CUDA 12 runtime and cuBLAS; bench/README.md" if query.is_cuda
                else "pip install faiss-cpu")
        return [Method("faiss flat", "dot", 1, None, flops, f"faiss is not installed ({hint})")]
    on_gpu = query.is_cuda
    if on_gpu and not hasattr(faiss, "StandardGpuResources"):
        return [Method("faiss-gpu flat", "dot", 1, None, flops, "the installed faiss has no GPU support")]
    methods, prefix = [], "faiss-gpu" if on_gpu else "faiss-cpu"
    for kind, metric in (("IndexFlatIP", "dot"), ("IndexFlatL2", "l2")):
        ks = [k for k in ((1, 8) if metric == "dot" else (1,)) if keep(f"{prefix} {kind} k={k}")]
        if not ks:  # no index built for rows left out
            continue
        index = getattr(faiss, kind)(query.shape[1])
        if on_gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), query.device.index or 0, index)
        index.add(reference.float().cpu().numpy())
        queries = query.float().cpu().numpy()
        for k in ks:
            def run(index=index, k=k):
                return torch.from_numpy(index.search(queries, k)[1])
            methods.append(Method(f"{prefix} {kind} k={k}", metric, k, run, flops))
    return methods


def _keops_methods(query, reference, flops, keep):
    return [Method(name, metric, k, run, flops, skip, prepare=prepare)
            for name, metric, k, run, skip, prepare in keops_rows(query, reference, keep)]


def _flash_kmeans_methods(query, reference, flops, keep):
    if not keep("flash-kmeans assign"):
        return []
    if not query.is_cuda:
        return [Method("flash-kmeans assign", "l2", 1, None, flops, "its Triton assignment kernel needs a GPU")]
    try:
        from flash_kmeans.assign_euclid_triton import euclid_assign_triton
    except ImportError:
        return [Method("flash-kmeans assign", "l2", 1, None, flops, "flash-kmeans is not installed")]
    points, centroids = query[None], reference[None]
    centroid_sq = reference.float().square().sum(1)[None]

    def assign():  # its fused Triton distance-argmin (the k-means assignment step)
        point_sq = query.float().square().sum(1)[None]
        return euclid_assign_triton(points, centroids, point_sq, c_sq=centroid_sq)[0].long()
    return [Method("flash-kmeans assign", "l2", 1, assign, flops)]


def _cuda_variant_methods(query, reference, flops):
    """The cuda backend's other kernels at k = 1 on sm_90 cards: mma.sync and the wgmma
    variants (HOPPER_VARIANTS) but the one its plain rows run (wgmma-256-tma up to D = 192
    and wgmma-tma above, unless the REFMATCH_CUDA_HOPPER_* settings say otherwise), each skipped
    where the call runs another kernel; then top-8 on the wgmma kernel
    (``REFMATCH_CUDA_HOPPER_TOPK=wgmma``, opt-in: "wgmma-topk", and "wgmma-topk-global" with its
    lists in the outputs throughout), against the cuda k = 1 dot.
    Elsewhere the ``cuda`` rows are mma.sync and these are skipped."""
    from refmatch.backends.cuda_backend import hopper_enabled, kernel_name, native_module
    from refmatch.backends.hopper_variants import HOPPER_VARIANTS, hopper_kernel, hopper_switched_off

    available = query.is_cuda and native_module() is not None and hopper_enabled(query.device)
    maps = query.T[None, :, :, None]
    plain = kernel_name(maps, reference) if available else "mma.sync"
    switched_off = hopper_switched_off()  # gpu_suite.sh: a wgmma check failed
    unavailable = ("REFMATCH_CUDA_HOPPER=0 keeps every call on mma.sync" if switched_off else
                   "needs a CUDA device" if not query.is_cuda else
                   "needs sm_90 and an sm_90a build (the cuda rows are the mma.sync kernel elsewhere)")
    methods = []
    for variant in ["mma.sync", *HOPPER_VARIANTS]:
        name = f"refmatch cuda {variant} k=1"
        if not available:
            if variant != plain:
                methods.append(Method(name, "dot", 1, None, flops, unavailable))
            continue
        with hopper_kernel(variant):
            runs = kernel_name(maps, reference)
        if runs == plain:  # e.g. wgmma-256-tma at D = 128: the plain cuda rows time it
            methods.append(Method(name, "dot", 1, None, flops, f"the cuda rows run the {runs} kernel"))
            continue
        if runs != variant:  # e.g. D=256: a 256-row query tile does not fit beside the pipeline
            methods.append(Method(name, "dot", 1, None, flops, f"this call runs the {runs} kernel"))
            continue

        def run(metric, variant=variant):
            with hopper_kernel(variant):
                return refmatch.match(query, reference, metric=metric, backend="cuda").index
        methods += [Method(name, metric, 1, lambda metric=metric, run=run: run(metric), flops)
                    for metric in ("dot", "l2", "cosine")]
    return methods + [_wgmma_topk_method(query, reference, flops, None if available else unavailable, lists)
                      for lists in ("shared", "global")]


def _wgmma_topk_method(query, reference, flops, unavailable, lists, k=8):
    """Top-k on the wgmma kernel (``REFMATCH_CUDA_HOPPER_TOPK=wgmma``), its lists kept as ``lists``
    says ("shared": in shared memory where they fit, "global": in the outputs), with the cuda
    backend's k = 1 dot as its baseline (issue #4's ratio); skipped where the call runs mma.sync."""
    from refmatch.backends.cuda_backend import kernel_name
    from refmatch.backends.hopper_variants import hopper_topk_kernel, hopper_topk_lists

    def top_k():
        with hopper_topk_kernel("wgmma"), hopper_topk_lists(lists):
            return refmatch.match(query, reference, k=k, metric="dot", backend="cuda").index

    def baseline():
        return refmatch.match(query, reference, metric="dot", backend="cuda").index
    if unavailable is None:
        with hopper_topk_kernel("wgmma"):
            runs = kernel_name(query.T[None, :, :, None], reference, k)
        unavailable = "this call runs the mma.sync kernel" if runs == "mma.sync" else None
    name = "wgmma-topk" if lists == "shared" else "wgmma-topk-global"
    return Method(f"refmatch cuda {name} k={k}", "dot", k, top_k, flops, unavailable, baseline=baseline)


def _skip_reason(call):
    """None when a 1 x 8 probe of a method runs; else why not: the backend's own reason for
    declining (ValueError), or the probe's error, so one broken backend costs a row, not the run."""
    try:
        call()
    except ValueError as error:
        return str(error).split(": ", 1)[-1]
    except Exception as error:  # noqa: BLE001 - a compile or CUDA error of one backend
        return f"{PROBE_FAILED}: {type(error).__name__}: {' '.join(str(error).split())[:160]}"
    return None


def wanted(name, only, exclude):
    """A method named ``name`` passes --only (a word of it in the name) and --exclude (none);
    case aside (the docs spell the peers FAISS and KeOps, their rows faiss and keops)."""
    name = name.lower()
    return (not only or any(word.lower() in name for word in only)) and \
        not any(word.lower() in name for word in exclude or ())


CLASSES = 4  # of the class-wise rows
PROBE_FAILED = "its 1 x 8 probe failed"  # a skip reason that is a failure (a compile or CUDA error), not a decline


def bench_labels(num_refs, device):
    """[M] labels of the class-wise rows: ``CLASSES`` grouped, as ReferenceBank stores its slots."""
    return (torch.arange(num_refs, device=device) * CLASSES) // num_refs


def _refmatch_methods(query, reference, flops, keep):
    """k = 1 (dot, l2 and cosine, the default), top-8 and the class-wise max per backend,
    side by side; only those whose name ``keep`` takes are probed and listed. Top-8 and the
    class-wise max carry the backend's k = 1 dot as their baseline (issue #4's ratios)."""
    labels = bench_labels(reference.shape[0], reference.device)
    methods = []
    for status in refmatch.backends():
        def search(backend=status.name, metric="dot", k=1):  # by default the baseline, k = 1 dot
            return refmatch.match(query, reference, k=k, metric=metric, backend=backend).index
        for metric, k in (("dot", 1), ("dot", 8), ("l2", 1), ("cosine", 1)):
            name = f"refmatch {status.name} k={k}"
            if keep(name):
                skip = _skip_reason(lambda: refmatch.match(query[:1], reference[:8], k=k, metric=metric,
                                                           backend=status.name))
                methods.append(Method(name, metric, k, functools.partial(search, metric=metric, k=k), flops, skip,
                                      baseline=search if k > 1 else None))

        def classwise(backend=status.name, labels=labels):
            return refmatch.classwise_max(query, reference, labels, CLASSES, metric="dot", backend=backend)
        name = f"refmatch {status.name} classwise C={CLASSES}"
        if keep(name):
            skip = _skip_reason(lambda: refmatch.classwise_max(query[:1], reference[:8], labels[:8], CLASSES,
                                                               metric="dot", backend=status.name))
            methods.append(Method(name, "dot", 1, classwise, flops, skip, classwise=True, baseline=search))
    return methods


# Peers by a word every one of their method names holds: an --exclude word within it skips the
# whole group before its library is imported (KeOps builds its nvrtc binder at import on a GPU).
PEER_GROUPS = {"faiss": _faiss_methods, "keops": _keops_methods, "flash-kmeans": _flash_kmeans_methods}


def all_methods(query, reference, fits_bytes, only=None, exclude=(), considered=None):
    """Every method for one (N, M, D) that --only and --exclude (``only``, ``exclude``: their
    words) leave, the GEMM ceilings first; a refmatch method they leave out is not probed, a
    peer group whose name holds an --exclude word not even imported. ``considered``, a list,
    receives every name the words were tried on (``unmatched_words``)."""
    n, m, d = query.shape[0], reference.shape[0], query.shape[1]
    flops = 2.0 * n * m * d
    fits = n * m * query.element_size() <= fits_bytes
    too_big = None if fits else "the N x M score matrix does not fit"
    # Two ceilings: the card's dense GEMM rate (a square product, compute-bound) and
    # torch.mm of this N, M, D, measured on as many query rows as fit; with small D
    # it is bound by writing the N x M output, which a fused kernel never writes.
    gemm_rows = max(1, min(n, int(fits_bytes // (m * query.element_size()))))
    # Zeroed, not empty: pages touched here, before the rows' memory baseline, on the CPU too.
    out = torch.zeros(gemm_rows, m, device=query.device, dtype=query.dtype)
    gemm_name = "gemm torch.mm this shape" + ("" if gemm_rows == n else f" ({gemm_rows} rows)")
    side = 8192 if query.is_cuda else 2048
    square = torch.randn(side, side, device=query.device).to(query.dtype)
    square_out = torch.zeros_like(square)

    def gemm():
        torch.mm(query[:gemm_rows], reference.T, out=out)

    def square_gemm():
        torch.mm(square, square, out=square_out)

    methods = [
        Method(f"gemm torch.mm {side}^3 (ceiling)", "-", 1, square_gemm, 2.0 * side ** 3),
        Method(gemm_name, "-", 1, gemm, 2.0 * gemm_rows * m * d),
        Method("naive (q @ r.T).max(1)", "dot", 1, lambda: (query @ reference.T).max(1).indices, flops, too_big),
        Method("torch.cdist + argmin", "l2", 1, lambda: torch.cdist(query.float(), reference.float()).argmin(1),
               flops, too_big),
    ]
    considered = [] if considered is None else considered

    def keep(name):
        considered.append(name)
        return wanted(name, only, exclude)
    excluded_groups = [group for group in PEER_GROUPS if any(word.lower() in group for word in exclude or ())]
    peers = [method for group, builder in PEER_GROUPS.items() if group not in excluded_groups
             for method in builder(query, reference, flops, keep)]
    methods += _refmatch_methods(query, reference, flops, keep)
    methods += [method for method in _cuda_variant_methods(query, reference, flops) if keep(method.name)] + peers
    considered += excluded_groups + [method.name for method in methods]
    # A peer would pad its list past M (FAISS with -1) and score as wrong: skipped as refmatch's rows.
    return [dataclasses.replace(method, skip=f"k must satisfy 1 <= k <= M={m}, got k={method.k}")
            if method.k > m and not method.skip else method for method in methods]


def unmatched_words(words, names):
    """The --only / --exclude ``words`` that no method name holds (case aside): likely typos."""
    return [word for word in words or () if not any(word.lower() in name.lower() for name in names)]
