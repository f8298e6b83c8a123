"""ReferenceBank: a class-balanced store of labelled pixel features."""
from typing import Optional, SupportsIndex

import torch
from torch import nn

from .arguments import as_int, check_label_values, inferred_num_classes, kept_labels
from .backends.scoring import METRICS
from .bank_checks import check_feature_maps, check_images, check_query, check_reference_rows, \
    checked_bank_arguments, require_values, state_dict_problem
from .bank_match import classwise_scores, match_filled_slots
from .bank_policies import POLICIES, reservoir_slots, ring_slots
from .bank_rows import bank_rows, query_in_dtype, warn_ring_overflow
from .masks import check_masks
from .ops import MatchResult, match


class ReferenceBank(nn.Module):
    """Labelled pixel features, at most ``capacity_per_class`` per class.

    Class c owns the slots [c * capacity, (c + 1) * capacity). Empty slots hold
    NaN features, which by the ``match`` contract never match. Features, labels,
    counters and (reservoir) the random state are buffers: ``.to(device)`` and ``state_dict``
    work, and a loaded bank draws on as the saved one would (the images kept for ``refresh``
    are not saved). Inside a model wrapped in DistributedDataParallel, DDP copies rank 0's
    bank over every rank's: ``refmatch.distributed.keep_shards_out_of_ddp(model)`` first keeps
    each rank's own. Build it outside ``torch.inference_mode()``,
    whose tensors ``add`` cannot update outside that mode (``no_grad`` is fine).

    Args:
        dim: feature channels D.
        num_classes: C; labels are 0..C-1.
        capacity_per_class: slots per class.
        dtype: floating-point storage dtype (queries are cast to it when matching; cosine
            queries past its range, as float16's, are scaled by a power of two first).
        metric: "cosine" (``add`` stores rows L2-normalised; ``from_tensors`` keeps
            them as given, which scores the same), "dot" or "l2".
        ignore_index: mask label that is never stored, even where it is one of the
            classes, which then stays empty (None: every mask pixel is a class; "pure"
            downsampling still drops mixed blocks).
        policy: "ring" replaces the oldest features of a class (for features that
            drift under an EMA teacher; within one ``add``, the batch's last rows in
            raster order: warned once where one batch overflows a class); "reservoir"
            keeps a uniform sample of all features ever added.
        downsample: how masks reach feature resolution: "majority" (a block's most
            frequent label; a tie is dropped), "labelled" (the majority of its labelled
            pixels: ignored ones abstain, for sparse labels), "nearest" (its centre pixel)
            or "pure" (majority, dropping pixels on class borders).
        seed: seed of the reservoir's random draws.

    Example:
        >>> bank = ReferenceBank(dim=64, num_classes=3, capacity_per_class=50_000)
        >>> bank.add(teacher_features, masks)         # [B, 64, h, w], [B, H, W]
        >>> result = bank.match(unlabelled_features)  # result.label: [B, h, w]
    """

    LATE_KEYS = ("generator_state", "settings")  # buffers that older state_dicts lack

    def __init__(self, dim: SupportsIndex, num_classes: SupportsIndex, capacity_per_class: SupportsIndex,
                 dtype: torch.dtype = torch.bfloat16, metric: str = "cosine",
                 ignore_index: Optional[SupportsIndex] = 255, policy: str = "ring", downsample: str = "majority",
                 seed: int = 0):
        super().__init__()
        dim, num_classes, capacity_per_class, ignore_index = checked_bank_arguments(
            dim, num_classes, capacity_per_class, dtype, ignore_index, metric=metric, policy=policy,
            downsample=downsample)
        self.dim, self.num_classes, self.capacity = dim, num_classes, capacity_per_class
        self.metric, self.ignore_index, self.policy, self.downsample = metric, ignore_index, policy, downsample
        self._generator = torch.Generator().manual_seed(seed)
        self._sources, self._ring_overflowed = [], False
        if policy == "reservoir":
            self.register_buffer("generator_state", self._generator.get_state())
        # What gives the stored rows and slots their meaning: a state_dict of a bank with another
        # metric or policy is refused on loading (bank_checks.state_dict_problem).
        self.register_buffer("settings", torch.tensor([METRICS.index(metric), POLICIES.index(policy)]))
        slots = num_classes * capacity_per_class
        self.register_buffer("features", torch.full((slots, dim), float("nan"), dtype=dtype))
        self.register_buffer("labels", torch.arange(num_classes).repeat_interleave(capacity_per_class))
        for name in ("counts", "seen"):  # stored features per class; features ever offered per class
            self.register_buffer(name, torch.zeros(num_classes, dtype=torch.long))

    @classmethod
    def from_tensors(cls, reference: torch.Tensor, labels: torch.Tensor, num_classes: Optional[SupportsIndex] = None,
                     metric: str = "cosine", ignore_index: Optional[SupportsIndex] = 255) -> "ReferenceBank":
        """A fixed bank over given rows: ``reference`` [M, D], ``labels`` [M] in [0, C)
        or ``ignore_index`` (such rows never match and count for no class).

        It matches like any bank (``index`` is the row of ``reference``) but takes no
        ``add``, ``clear`` or ``refresh``. Rows are copied in their own dtype, so the
        bank never writes into the caller's tensors; ``metric`` as ``refmatch.match`` takes it.
        ``num_classes`` None means C =
        the largest label other than ``ignore_index``, plus 1 (refused above 65536 classes, most
        likely a stray label: pass ``num_classes`` for more).
        """
        check_reference_rows(reference, labels)
        ignore_index = as_int("ignore_index", ignore_index, optional=True)
        if num_classes is None:
            num_classes = inferred_num_classes(labels, ignore_index)
        bank = cls.__new__(cls)
        ReferenceBank.__init__(bank, reference.shape[1], num_classes, 1, reference.dtype, metric, ignore_index)
        check_label_values(labels, ignore_index, num_classes)
        bank.capacity = None
        # plain tensors: a subclass (MONAI's MetaTensor) in the buffers fails torch.load(weights_only=True)
        bank.features = reference.detach().as_subclass(torch.Tensor).clone()
        bank.labels = labels.detach().as_subclass(torch.Tensor).to(torch.long, copy=True)
        bank.counts = torch.bincount(kept_labels(bank.labels, ignore_index), minlength=num_classes).to(reference.device)
        bank.seen = bank.counts.clone()
        return bank

    def __len__(self):
        """Features stored (a host read; a sharded bank's counts every rank's, a collective)."""
        return self._stored()

    def extra_repr(self):
        """``print(bank)``: the settings and the features held here per class (a host read)."""
        size = f"capacity_per_class={self.capacity}, policy={self.policy!r}" if self.capacity else "from tensors"
        return (f"dim={self.dim}, num_classes={self.num_classes}, {size}, metric={self.metric!r}, "
                f"dtype={self.features.dtype}, ignore_index={self.ignore_index}, "
                f"held per class={'meta' if self.counts.is_meta else self.counts.tolist()}")

    def _stored(self):
        """Features held by this process (``__len__`` of a sharded bank counts all ranks)."""
        require_values(bank=self.counts)
        return int(self.counts.sum())

    def class_counts(self):
        """[C] int64: stored features per class."""
        return self.counts.clone()

    def memory_bytes(self):
        """Bytes held by the bank's buffers and by the images (and masks) kept for ``refresh``,
        which are in host memory."""
        kept = [tensor for source in self._sources for tensor in source]
        return sum(tensor.numel() * tensor.element_size() for tensor in [*self.buffers(), *kept])

    def clear(self):
        """Forget every stored feature (and the images kept for ``refresh``)."""
        self._require_growable()
        self.features.fill_(float("nan"))
        self.counts.zero_()
        self.seen.zero_()
        self._sources = []

    @torch.no_grad()
    def add(self, features: torch.Tensor, masks: torch.Tensor, images: Optional[torch.Tensor] = None) -> None:
        """Store the labelled pixels of a batch.

        Args:
            features: [B, D, h, w] feature maps, or [B, D, z, h, w] volumes.
            masks: [B, H, W] integer labels at image resolution ([B, Z, H, W]), each side an
                integer multiple of the features'; ``ignore_index`` pixels are dropped, as are
                feature rows holding NaN or Inf (they could never match).
            images: optional [B, ...] inputs of ``features``, kept on the CPU so that
                ``refresh`` can re-embed them later (every such batch, until ``clear``: host
                memory grows with them; ``memory_bytes`` counts them).

        Warns when a class of the masks leaves no row: its pixels did not survive the
        downsampling to h x w (a structure thinner than a feature pixel) or its features
        held NaN or Inf; when finite rows overflow the bank's dtype; and, once per bank, when
        one batch gives a class more rows than its ring slots (``bank_rows.py``).
        """
        check_feature_maps(features, self.dim)
        self._require_growable()
        require_values(features=features, masks=masks, bank=self.features)
        check_masks(masks, features.shape[0], features.shape[2:], self.num_classes, self.ignore_index)
        check_images(images, features.shape[0])
        rows, classes = bank_rows(self, features, masks)
        for cls in range(self.num_classes):
            self._insert(cls, rows[classes == cls])
        if images is not None:
            self._sources.append((images.detach().cpu(), masks.detach().cpu()))

    def _load_from_state_dict(self, state_dict, prefix, *args):  # args: metadata, strict, missing keys, ...
        problem = state_dict_problem(self, state_dict, prefix)
        if problem is not None:
            args[4].append(problem)  # error_msgs: load_state_dict raises with them
            return
        super()._load_from_state_dict(state_dict, prefix, *args)
        for name in self.LATE_KEYS:  # saved before they were buffers: keep this bank's
            if prefix + name in args[2]:
                args[2].remove(prefix + name)

    def _insert(self, cls, rows):
        count, seen, start = rows.shape[0], int(self.seen[cls]), cls * self.capacity
        if count == 0:
            return
        if self.policy == "ring":
            if count > self.capacity and not self._ring_overflowed:
                self._ring_overflowed = True
                warn_ring_overflow(cls, count, self.capacity)
            slots, picked = ring_slots(seen, count, self.capacity)
        else:
            # The buffer holds the generator's state, so a loaded state_dict draws on where the saved bank was.
            self._generator.set_state(self.generator_state.cpu())
            slots, picked = reservoir_slots(seen, count, self.capacity, self._generator)
            self.generator_state.copy_(self._generator.get_state())
        self.features[start + slots.to(self.features.device)] = rows[picked.to(rows.device)]
        self.seen[cls] += count
        self.counts[cls] = min(self.capacity, seen + count)

    @torch.no_grad()
    def refresh(self, embed):
        """Re-embed the kept images after the teacher changed.

        ``embed(images) -> [B, D, h, w]`` (or volumes) is called on every batch given to ``add``
        with ``images``, in the original order; the bank is rebuilt from scratch.
        When ``embed`` or an ``add`` raises, the bank is put back as it was (from a
        copy of its buffers in host memory) and the error goes on.
        """
        self._require_growable()
        if not self._sources:
            raise RuntimeError("refresh needs images: pass images=... to add() for the batches to re-embed (a bank "
                               "loaded from a state_dict has none: its images are not saved; add them again)")
        sources = self._sources
        saved = {name: buffer.to("cpu", copy=True) for name, buffer in self.named_buffers()}
        self.clear()
        try:
            for images, masks in sources:
                self.add(embed(images.to(self.features.device)), masks, images=images)
        except BaseException:
            for name, buffer in self.named_buffers():
                buffer.copy_(saved[name])
            self._sources = sources
            raise

    def _require_growable(self):
        if self.capacity is None:
            raise RuntimeError("this bank was built by from_tensors and is fixed: it takes no add(), clear() or "
                               "refresh(); build one with ReferenceBank(dim, num_classes, capacity_per_class)")
        if self.features.is_inference() and not torch.is_inference_mode_enabled():
            raise RuntimeError("this bank was built under torch.inference_mode(), whose tensors cannot change outside "
                               "it: build the bank outside inference_mode (torch.no_grad is fine)")

    def _on_every_rank(self, compute):
        """``compute()``; a sharded bank makes every rank raise where it raises on one."""
        return compute()

    def _require_features(self, stored, k=1):
        """Raise unless ``stored`` features (this process's, or every rank's for a sharded
        bank) are at least one and at least k."""
        if stored == 0:
            fill = ("from_tensors was given no row labelled other than ignore_index" if self.capacity is None
                    else "add() labelled features before matching (it stores no ignored pixel and no "
                         "feature row holding NaN or Inf)")
            raise ValueError(f"the reference bank is empty: {fill}")
        if not 1 <= k <= stored:
            raise ValueError(f"k must satisfy 1 <= k <= {stored} (stored features), got k={k}")

    def match(self, query: torch.Tensor, k: SupportsIndex = 1, backend: str = "auto") -> MatchResult:
        """``refmatch.match`` of ``query`` ([N, D] or [B, D, h, w], cast to the bank's
        dtype) against the stored features; ``index`` is a slot, ``label`` its class.
        Returns MatchResult: each field [N] / [B, h, w], or [N, k] / [B, k, h, w] for k > 1;
        float32 scores (float64 for a float64 bank), int64 indices and labels. ``k`` and
        ``backend`` as ``refmatch.match`` takes them.

        Only filled slots are scored (``bank_match``): a growable cosine or dot bank runs one
        fused match over them, an l2 one a match per class; a ``from_tensors`` bank one match
        over all its rows (ignored labels never match).
        """
        k = as_int("k", k)
        stored = self._stored()
        self._require_features(stored, k)
        query = self._checked_query(query)
        if self.capacity is not None:
            return match_filled_slots(self, query, k, backend)
        # The ignored-row mask only when some row is ignored: it changes the kernels' path.
        ignore_index = self.ignore_index if stored < self.labels.shape[0] else None
        return match(query, self.features, self.labels, k=k, metric=self.metric, backend=backend,
                     ignore_index=ignore_index)

    def classwise_max(self, query: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Best score per class of ``query`` ([N, D] or [B, D, h, w], cast to the bank's dtype):
        [N, C] for rows, [B, C, h, w] for maps; ``backend`` as ``refmatch.match`` takes it.

        Classes with no stored feature score -inf (+inf distance for l2). Each
        class's slots are contiguous (a ``from_tensors`` bank selects them, a copy), so
        this is one fused match per class.
        """
        self._require_features(self._stored())
        query = self._checked_query(query)
        return classwise_scores(self, query, backend)

    def _checked_query(self, query):
        """``query`` in the bank's dtype, after checking it is [N, D] or [B, D, h, w] with the bank's D."""
        check_query(query, self.features)
        return query_in_dtype(query, self.features.dtype, self.metric)

    def _class_rows(self, cls, counts=None):
        """[rows, D] features of class ``cls``: the filled prefix of its slots (ring and
        reservoir both fill slots in order; ``counts``, a list, spares a caller that takes every
        class a host read each), or a selection of a fixed bank (none for ``ignore_index``)."""
        if self.capacity is None:
            return self.features[self.labels == cls] if cls != self.ignore_index else self.features[:0]
        start = cls * self.capacity
        return self.features[start:start + (int(self.counts[cls]) if counts is None else counts[cls])]
