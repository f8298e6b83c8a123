"""Input checks of ReferenceBank that go beyond a shape: tensors that hold values, the images
kept for ``refresh``, and a state_dict that fits the bank. Each raises (or reports) before the
bank changes, so a refused call or load leaves it as it was."""
import torch

from .arguments import as_int, channels_last_hint, check_integer_labels, describe, volume_hint
from .backends.scoring import METRICS
from .bank_policies import POLICIES
from .choices import check_choice
from .masks import DOWNSAMPLING


def require_values(**tensors):
    """Raise for a meta tensor among ``tensors`` (name=tensor): which rows a bank keeps and
    matches depends on values, which meta tensors lack."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            raise ValueError(f"{name} is a meta tensor: a ReferenceBank needs tensors that hold values (what it "
                             "stores and matches depends on them); refmatch.match and classwise_max take meta "
                             "tensors to infer result shapes")


def checked_bank_arguments(dim, num_classes, capacity_per_class, dtype, ignore_index, **choices):
    """The constructor's sizes as ints >= 1 and ignore_index as an int or None, after checking
    the storage dtype and the ``choices`` (metric, policy, downsample) by name."""
    sizes = {"dim": dim, "num_classes": num_classes, "capacity_per_class": capacity_per_class}
    sizes = {name: as_int(name, value) for name, value in sizes.items()}
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (empty slots hold NaN), got {dtype}")
    allowed = {"metric": METRICS, "policy": POLICIES, "downsample": DOWNSAMPLING}
    for name, value in choices.items():
        check_choice(name, value, allowed[name])
    ignore_index = as_int("ignore_index", ignore_index, optional=True)
    if ignore_index is not None and not -2 ** 62 < ignore_index < 2 ** 62:  # a label tensors (and ranks) can hold
        raise ValueError(f"ignore_index must be a label within (-2**62, 2**62), got {ignore_index}")
    return (*sizes.values(), ignore_index)


def check_query(query, bank_features):
    """A query of ``match``/``classwise_max``: [N, D] rows or [B, D, h, w] maps with the bank's D."""
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"query must be a torch.Tensor, got {type(query).__name__}")
    if query.dim() not in (2, 4):
        raise ValueError(f"query must be [N, D] rows or [B, D, h, w] maps, got {describe(query)}"
                         + volume_hint(query))
    if not query.dtype.is_floating_point:  # the bank casts queries to its dtype: an integer one would pass
        raise TypeError(f"query must be floating point, as match's, got {query.dtype}")
    if query.shape[1] != bank_features.shape[1]:
        raise ValueError(f"query has D={query.shape[1]} channels (dim 1), the bank holds D={bank_features.shape[1]}"
                         + channels_last_hint(query, bank_features.shape[1]))
    require_values(query=query, bank=bank_features)


def check_feature_maps(features, dim):
    """``add``'s and PseudoLabeler's features: [B, D, h, w] maps or [B, D, z, h, w] volumes with
    the bank's D and every side >= 1."""
    if not isinstance(features, torch.Tensor) or features.dim() not in (4, 5):
        raise ValueError(f"features must be [B, D, h, w] maps or [B, D, z, h, w] volumes, got {describe(features)}")
    if not features.dtype.is_floating_point:
        raise TypeError(f"features must be floating point, as match's query, got {features.dtype}")
    if features.shape[1] != dim:
        raise ValueError(f"features have D={features.shape[1]} channels, the bank holds D={dim}"
                         + channels_last_hint(features, dim))
    if 0 in features.shape[2:]:
        raise ValueError(f"features must have sides >= 1 (a pixel per feature row), got {describe(features)}")


def check_reference_rows(reference, labels):
    """``from_tensors``' rows: floating-point [M, D] with D >= 1, and integer labels [M]."""
    if not isinstance(reference, torch.Tensor) or reference.dim() != 2:
        raise ValueError(f"reference must be [M, D], got {describe(reference)}")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (reference.shape[0],):
        raise ValueError(f"labels must be [M] = [{reference.shape[0]}], got {describe(labels)}")
    check_integer_labels(labels)
    if not reference.dtype.is_floating_point:
        raise TypeError(f"reference must hold floating-point features, got {reference.dtype}")
    if reference.shape[1] == 0:
        raise ValueError(f"reference must have D >= 1 channels, got {describe(reference)}")
    require_values(reference=reference, labels=labels)


def check_images(images, batch):
    """``add``'s images, kept for ``refresh``: None or a tensor with one entry per feature map."""
    if images is not None and (not isinstance(images, torch.Tensor) or images.dim() < 1
                               or images.shape[0] != batch):
        raise ValueError(f"images must be None or a tensor of B={batch} inputs [B, ...] (what refresh re-embeds), "
                         f"got {describe(images)}")


def _layouts(bank, state_dict, prefix):
    """The saved and this bank's dim, classes and slots per class, where both are growable, as
    text (", saved ...: ..."), else ""."""
    features, counts = state_dict.get(prefix + "features"), state_dict.get(prefix + "counts")
    if bank.capacity is None or not isinstance(features, torch.Tensor) or not isinstance(counts, torch.Tensor) \
            or features.dim() != 2 or counts.dim() != 1 or not counts.numel():
        return ""
    layout = "{} x {} slots of dim {}".format
    return (f": saved {layout(counts.numel(), features.shape[0] // counts.numel(), features.shape[1])}, this bank "
            f"{layout(bank.num_classes, bank.capacity, bank.dim)} (classes x capacity_per_class)")


def state_dict_problem(bank, state_dict, prefix):
    """Why ``state_dict`` cannot load into ``bank`` (its shard's rank, every buffer's shape, the
    metric and policy that give the rows their meaning, a growable bank's slot layout and
    counts), or None. Checked before anything loads: torch skips only a buffer of the wrong
    shape and would load the counts beside features it left out."""
    saved_rank, rank = state_dict.get(prefix + "shard_rank"), getattr(bank, "shard_rank", None)
    if saved_rank is not None and rank is not None and int(saved_rank) != int(rank):  # a ShardedReferenceBank
        return (f"{prefix}shard_rank: saved on rank {int(saved_rank)}, this is rank {int(rank)}: each rank loads "
                "the state_dict it saved (its own shard); nothing was loaded")
    for name, buffer in bank.named_buffers(recurse=False):
        saved = state_dict.get(prefix + name)
        if isinstance(saved, torch.Tensor) and saved.shape != buffer.shape:
            sharded = ", or a shard of another world size" if rank is not None else ""
            return (f"{prefix}{name}: saved with shape {tuple(saved.shape)}, this bank's is {tuple(buffer.shape)} "
                    f"(another dim, num_classes or capacity_per_class{sharded}){_layouts(bank, state_dict, prefix)}; "
                    "nothing was loaded")
    saved_settings = state_dict.get(prefix + "settings")  # an older refmatch's state_dicts have none
    if saved_settings is not None and not torch.equal(saved_settings.cpu(), bank.settings.cpu()):
        metric, policy = saved_settings.tolist()
        return (f"{prefix}settings: saved by a bank with metric={METRICS[metric]!r}, policy={POLICIES[policy]!r}, "
                f"this one has metric={bank.metric!r}, policy={bank.policy!r}: its rows or slots would mean "
                "something else here; nothing was loaded")
    saved_labels = state_dict.get(prefix + "labels")
    if bank.capacity is not None and saved_labels is not None and not torch.equal(saved_labels.cpu(),
                                                                                   bank.labels.cpu()):
        return (f"{prefix}labels: from a bank made by from_tensors, or of another layout; this bank groups its "
                f"slots by class, {bank.capacity} per class")
    saved_counts = state_dict.get(prefix + "counts")
    if bank.capacity is not None and saved_counts is not None and not bool(
            ((saved_counts >= 0) & (saved_counts <= bank.capacity)).all()):
        return (f"{prefix}counts: {saved_counts.tolist()} stored features per class, but a class holds 0 to "
                f"{bank.capacity} in this bank")
    return None
