"""The rows a ReferenceBank stores from one batch of feature maps and masks, the warnings
about what it could not store, and its queries cast to the bank's dtype."""
import os
import sys
import warnings

import torch

from .backends.scoring import host_read_allowed, normalized_rows
from .masks import downsample_masks, label_is, size_text

_PACKAGE = os.path.normcase(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = (_PACKAGE + os.sep, os.path.normcase(os.path.dirname(os.path.abspath(torch.__file__))) + os.sep)
_RECIPES = os.path.join(_PACKAGE, "recipes") + os.sep


def user_stacklevel():
    """The ``stacklevel`` at which a warning from the function calling this points at the
    user's line: past refmatch's own frames (``add``, ``refresh``, a sharded bank's) and
    torch's (``no_grad``'s wrapper). The recipes count as the user's code."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None:
        path = os.path.normcase(os.path.abspath(frame.f_code.co_filename))
        if not path.startswith(_INTERNAL) or path.startswith(_RECIPES):
            break
        frame, level = frame.f_back, level + 1
    return level


def bank_rows(bank, features, masks):
    """features [B, D, *sides] and masks [B, *mask sides] -> (rows [P, D] in ``bank``'s dtype
    and on its device, L2-normalised for cosine; classes [P]: each row's class, or -1 where
    nothing is stored: an ignored or tied pixel, or a row holding NaN or Inf in the bank's
    dtype). Warns for a class of the masks that keeps no row, and for finite rows that
    overflow the bank's dtype (a float16 bank of large features)."""
    dropped = -1 if bank.ignore_index is None else bank.ignore_index  # never a class: masks are >= 0
    labels = downsample_masks(masks.to(features.device), features.shape[2:], bank.num_classes, dropped,
                              bank.downsample).reshape(-1)
    rows = features.movedim(1, -1).reshape(-1, bank.dim)
    # Normalised in float32 at least, in float64 for a float64 bank (no rounding on the way).
    rows = rows.to(torch.promote_types(torch.promote_types(rows.dtype, bank.features.dtype), torch.float32))
    if bank.metric == "cosine":
        rows = normalized_rows(rows)
    # Only a cast to a narrower range (float16, bfloat16 from float32) can overflow: no extra pass otherwise.
    narrowing = torch.finfo(bank.features.dtype).max < torch.finfo(rows.dtype).max
    finite_before = rows.isfinite().all(dim=1) if narrowing else None
    rows = rows.to(device=bank.features.device, dtype=bank.features.dtype)
    labels, finite = labels.to(rows.device), rows.isfinite().all(dim=1)
    kept = labels != dropped
    classes = torch.where(finite & kept, labels, -1)
    overflow = finite_before.to(rows.device) & ~finite & kept if narrowing else torch.zeros_like(kept)
    # A class lost to overflow alone has the overflow warning below, not the NaN or Inf one.
    warn_lost_classes(masks, dropped, labels[kept], labels[(finite | overflow) & kept], bank.num_classes,
                      features.shape[2:], bank.downsample)
    overflowed = int(overflow.sum())
    if overflowed:
        warnings.warn(f"{overflowed} finite feature row(s) overflowed the bank's {bank.features.dtype} (values "
                      f"beyond {torch.finfo(bank.features.dtype).max:.4g}) and were not stored: scale the features "
                      "down, use metric='cosine', or a bank dtype of wider range (bfloat16, float32)",
                      stacklevel=user_stacklevel())
    return rows, classes


def warn_lost_classes(masks, ignore_index, downsampled, stored, num_classes, feature_size, downsample):
    """Warn for each class present in ``masks`` [B, H, W] that none of the ``downsampled``
    labels (of the pixels that were not dropped) keeps, a structure thinner than a feature
    pixel at ``feature_size`` under the ``downsample`` mode, or that ``stored`` (the labels of
    the rows kept, or lost to overflow only) lacks, where every row held NaN or Inf. Pixels
    equal to ``ignore_index`` count for no class."""
    present = masks[~label_is(masks, ignore_index)].long()
    counts = torch.stack([torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes].cpu()
                          for labels in (present, downsampled, stored)])  # each on its own device
    in_masks, survived, kept = (counts > 0).tolist()
    lost = [c for c in range(num_classes) if in_masks[c] and not survived[c]]
    non_finite = [c for c in range(num_classes) if survived[c] and not kept[c]]
    if lost:
        why, other_modes = {
            "nearest": ("never at the pixel a block takes", ", or downsample='labelled' for sparse labels (ignored "
                        "pixels abstain)"),
            "labelled": ("outnumbered or tied in every block by another class", ", or downsample='nearest'"),
        }.get(downsample, ("outnumbered or tied in every block (by another class or by ignored pixels)",
                           ", or downsample='labelled' for sparse labels (ignored pixels abstain) or 'nearest'"))
        warnings.warn(f"class(es) {lost} of the masks kept no pixel at the features' {size_text(feature_size)}"
                      f": thinner than a feature pixel, or {why}; they cannot "
                      f"be matched: tap finer features (FeatureTap's size; the recipe's tap_size){other_modes}",
                      stacklevel=user_stacklevel())
    if non_finite:
        warnings.warn(f"class(es) {non_finite}: every feature row held NaN or Inf in the bank's dtype, so none "
                      "was stored", stacklevel=user_stacklevel())


def warn_ring_overflow(cls, count, capacity):
    """Warn that one ``add`` gave class ``cls`` more rows than its ``capacity`` ring slots."""
    warnings.warn(f"one add() gave class {cls} {count} rows for its {capacity} slots: policy='ring' keeps the batch's "
                  f"last {capacity} in raster order (the bottom rows of its last images), not a spread over it; "
                  "policy='reservoir' keeps a uniform sample, or add fewer images at a time (warned once per bank)",
                  stacklevel=user_stacklevel())


def query_in_dtype(query, dtype, metric):
    """``query`` [N, D] or [B, D, h, w] cast to a bank's ``dtype``. A cast to a narrower range
    (float16) turns large rows into Inf, which match nothing: cosine rows near that range are
    first scaled by a power of two (exact; cosine ignores scale), and for the other metrics a
    warning counts the rows that overflowed (not under torch.compile, where it would read the host)."""
    limit = torch.finfo(dtype).max
    if limit >= torch.finfo(query.dtype).max:  # bfloat16 stops just below float32's largest values
        return query.to(dtype)
    if metric == "cosine":
        peak = query.abs().amax(dim=1, keepdim=True)
        scale = torch.where(peak.isfinite() & (peak > limit / 2), -torch.frexp(peak).exponent, 0)
        return torch.ldexp(query, scale).to(dtype)
    cast = query.to(dtype)
    if host_read_allowed(query):
        overflowed = int((query.isfinite().all(dim=1) & ~cast.isfinite().all(dim=1)).sum())
        if overflowed:
            warnings.warn(f"{overflowed} finite query row(s) overflowed the bank's {dtype} (values beyond "
                          f"{limit:.4g}) to Inf, whose matches are not the rows': scale the features down, use "
                          "metric='cosine', or a bank dtype of wider range (bfloat16, float32)",
                          stacklevel=user_stacklevel())
    return cast
