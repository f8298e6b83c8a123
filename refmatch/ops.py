"""Public functional API: ``match`` and ``classwise_max``."""
from typing import NamedTuple, Optional, SupportsIndex

import torch

from .arguments import as_int, channels_last_hint, check_integer_labels, check_label_values, volume_hint
from .backends import NAMES as BACKEND_NAMES
from .backends import MatchProblem, select
from .backends.l2_shift import centred_for_l2
from .backends.scoring import METRICS, as_maps
from .choices import check_choice
from .masks import label_is

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class MatchResult(NamedTuple):
    """Result of :func:`match`.

    score: float32 ([N], [N, k], [B, H, W] or [B, k, H, W]); float64 for float64 input.
        Similarity for "cosine"/"dot", squared distance for "l2"; best first.
    index: int64 reference row of each match, -1 where nothing beats the worst score.
    label: ``labels[index]`` (-1 where index is -1), or None without labels.
    """

    score: torch.Tensor
    index: torch.Tensor
    label: Optional[torch.Tensor]


def _shape(tensor):
    return tuple(tensor.shape)

def _check_inputs(query, reference, labels, k, metric, backend):
    for name, value in (("query", query), ("reference", reference)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.is_nested:  # strided nested tensors pass the layout check
            raise TypeError(f"{name} must be a dense tensor, got a nested tensor: torch.cat(x.unbind()) joins "
                            "its rows")
        if value.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}; .to_dense() "
                            "converts it")
    if query.dim() not in (2, 4):
        raise ValueError(f"query must be [N, D] rows or [B, D, H, W] feature maps, "
                         f"got shape {_shape(query)}" + volume_hint(query))
    if reference.dim() != 2:
        raise ValueError(f"reference must be [M, D], got shape {_shape(reference)}")
    dim = query.shape[1]
    if reference.shape[1] != dim:
        where = "D = query.shape[1]" + channels_last_hint(query, reference.shape[1])
        if reference.shape[0] == dim:
            where += "; a [D, M] reference? pass reference.T"
        raise ValueError(f"reference has D={reference.shape[1]} channels but query has {dim} ({where})")
    if dim == 0:
        raise ValueError("query and reference have D=0 channels; need D >= 1")
    if reference.shape[0] == 0:
        raise ValueError("reference is empty (M=0); need at least one reference row")
    if query.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"query must be float16, bfloat16, float32 or float64, got {query.dtype}")
    if reference.dtype != query.dtype:
        raise TypeError(f"reference dtype {reference.dtype} differs from query dtype {query.dtype}; "
                        "cast one of them (nothing is cast silently)")
    if reference.device != query.device:
        raise ValueError(f"reference is on {reference.device} but query is on {query.device}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        check_integer_labels(labels)
        if _shape(labels) != (reference.shape[0],):
            raise ValueError(f"labels must be [M] = [{reference.shape[0]}] (one per reference row), "
                             f"got shape {_shape(labels)}")
        if labels.device != reference.device:
            raise ValueError(f"labels are on {labels.device} but reference is on {reference.device}: move them "
                             f"with labels.to(reference.device)")
    if not 1 <= k <= reference.shape[0]:
        raise ValueError(f"k must satisfy 1 <= k <= M={reference.shape[0]}, got k={k}")
    check_choice("metric", metric, METRICS)
    check_choice("backend", backend, ("auto", *BACKEND_NAMES))


def _ignored(labels, ignore_index):
    """[M] bool mask of references that never match, or None (computed on the device, no sync)."""
    return None if ignore_index is None else label_is(labels, ignore_index)


def rows_as_query(values, query):
    """[N, c] per-row values in ``query``'s layout: [N, c] for rows, [B, c, H, W] (a view)
    for [B, D, H, W] maps, whose rows run over (b, h, w)."""
    if query.dim() == 2:
        return values
    batch, _, height, width = query.shape
    return values.reshape(batch, height, width, values.shape[1]).permute(0, 3, 1, 2)


def _shape_result(values, query, k):
    """[N, k] matches to the public shape of ``query``'s results (without the k axis for k = 1)."""
    shaped = rows_as_query(values, query)
    return shaped[:, 0] if k == 1 else shaped


def match(query: torch.Tensor, reference: torch.Tensor, labels: Optional[torch.Tensor] = None, *, k: SupportsIndex = 1,
          metric: str = "cosine", backend: str = "auto", ignore_index: Optional[SupportsIndex] = None) -> MatchResult:
    """Most similar reference row(s) of every query row, without the N x M matrix.

    Args:
        query: [N, D] rows or [B, D, H, W] feature maps (read through their strides;
            a volume [B, D, Z, H, W] as volume.flatten(2, 3), results .unflatten(-2, (Z, H)));
            float16, bfloat16 or float32 (float64 on the torch backend).
        reference: [M, D], same dtype and device as ``query``.
        labels: optional integer [M] label of each reference row.
        k: number of matches per row, best first (1 <= k <= M).
        metric: "cosine" (inner product of L2-normalised rows), "dot", or "l2"
            (squared Euclidean distance; the smallest wins).
        backend: "auto" (fastest available for the device), "torch", "triton" or "cuda".
        ignore_index: references whose label equals it never match (needs labels).

    Returns:
        MatchResult(score, index, label), each [N] / [B, H, W] for k = 1, or
        [N, k] / [B, k, H, W] for k > 1 (a view of [B, H, W, k]: not contiguous);
        score float32 (float64 for float64 inputs), index and label int64, on the
        inputs' device. Among equal scores the lowest reference
        index wins; NaN and the worst score (-inf, +inf for l2) never win: a row
        with nothing better gets index -1 and label -1 (so does every slot beyond
        the references it can match). Scores
        carry no gradient. With labels, one host read checks their values
        (labels >= 0 except ignore_index), except under torch.compile or graph capture.

    Example:
        >>> result = refmatch.match(features, bank, bank_labels)      # [B, D, H, W] maps
        >>> pseudo_labels = result.label                              # [B, H, W]
    """
    k, ignore_index = as_int("k", k), as_int("ignore_index", ignore_index, optional=True)
    _check_inputs(query, reference, labels, k, metric, backend)
    if labels is not None:
        check_label_values(labels, ignore_index)
    elif ignore_index is not None:
        raise ValueError("ignore_index needs labels: pass the [M] reference labels")
    problem = MatchProblem(query.device, query.dtype, k, metric, query.shape[1])
    chosen = select(problem, backend)
    ignored = _ignored(labels, ignore_index)
    maps, reference = as_maps(query.detach()), reference.detach()
    if metric == "l2":
        maps, reference = centred_for_l2(maps, reference, ignored)
    score, index = chosen.op(maps, reference, ignored, k, metric)
    label = None
    if labels is not None:
        label = torch.where(index >= 0, labels[index.clamp(min=0)].long(), -1)
        label = _shape_result(label, query, k)
    return MatchResult(_shape_result(score, query, k), _shape_result(index, query, k), label)


def classwise_max(query: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor, num_classes: SupportsIndex, *,
                  metric: str = "cosine", backend: str = "auto",
                  ignore_index: Optional[SupportsIndex] = None) -> torch.Tensor:
    """Best score per class of every query row, without the N x M matrix.

    Args:
        query: [N, D] rows or [B, D, H, W] maps (volumes flattened as for ``match``).
        reference: [M, D], the query's dtype and device.
        labels: [M] integers in [0, num_classes), or ignore_index.
        num_classes: C (fused on the Triton and CUDA backends for C <= 64; the
            torch backend takes any C).
        metric, backend: as in :func:`match`.
        ignore_index: references with this label count for no class.

    Returns:
        [N, C] for rows, [B, C, H, W] for maps (float32; float64 for float64
        inputs): the best similarity per class, or
        for "l2" the smallest squared distance (its GEMM form, after the shift that
        ``match`` makes, clamped at 0); -inf (+inf for l2) for a class with no
        reference, and in every class of a row that holds Inf or NaN (cosine, l2).

    Example:
        >>> scores = refmatch.classwise_max(features, bank, bank_labels, num_classes=3)
        >>> probabilities = refmatch.vote(scores, num_classes=3).probabilities
    """
    if labels is None:
        raise ValueError("labels are required: one class label per reference row")
    num_classes, ignore_index = as_int("num_classes", num_classes), as_int("ignore_index", ignore_index, optional=True)
    _check_inputs(query, reference, labels, 1, metric, backend)
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    check_label_values(labels, ignore_index, num_classes)
    problem = MatchProblem(query.device, query.dtype, 1, metric, query.shape[1], op="classwise",
                           num_classes=num_classes)
    chosen = select(problem, backend)
    ignored = _ignored(labels, ignore_index)
    kernel_labels = labels.long() if ignored is None else labels.long().masked_fill(ignored, 0)
    maps, reference = as_maps(query.detach()), reference.detach()
    if metric == "l2":
        maps, reference = centred_for_l2(maps, reference, ignored)
    return rows_as_query(chosen.classwise_op(maps, reference, kernel_labels, ignored, num_classes, metric), query)
