"""ShardedReferenceBank: one reference bank spread over the ranks of torch.distributed.

Each rank stores 1/world of the references. ``match`` gathers every rank's
queries, matches them against the local shard, gathers the partial bests and
merges them per query with the global lowest-index tie rule, so every rank gets
what one process holding the whole bank would return, up to the rounding of
scores: each shard's GEMM has another shape, so a score can differ by about an
ulp and a near-tie that close can resolve differently (exact where the scores
are, e.g. small integer features). One exception: an l2 ``classwise_max`` returns
distances that each shard computes about its own centre (see docs/contract.md's l2
note), so far from the origin they can differ from one process's by more than an
ulp, and are then the more accurate. Only ``torch.distributed`` collectives are
used (NCCL and gloo alike).
"""
import copy
import math
import operator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .arguments import as_int, check_label_values, inferred_num_classes
from .backends.scoring import METRICS, accumulation_dtype, worst_score
from .bank import ReferenceBank
from .bank_checks import check_reference_rows
from .bank_policies import POLICIES
from .candidates import keep_best
from .masks import DOWNSAMPLING
from .ops import MatchResult, _shape_result, rows_as_query


CALLS = ("match", "classwise_max", "len")  # the collectives every rank must make in step


def _gather(tensor, group):
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def _world_size(group):
    if isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER:  # new_group, on ranks outside it
        raise ValueError("this rank is not in the process group: build the bank on the group's ranks only")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be None (the default group) or a torch.distributed ProcessGroup, got "
                        f"{type(group).__name__}")
    return dist.get_world_size(group)


def keep_shards_out_of_ddp(model):
    """Tell DistributedDataParallel to leave the buffers of every ShardedReferenceBank, and
    every plain ReferenceBank, inside ``model`` alone; call it before wrapping ``model``. DDP
    otherwise copies rank 0's buffers to every rank, at wrapping and each forward pass: rank
    0's shard (the bank's next call raises), or rank 0's plain bank over each rank's own
    (silently: the rows the other ranks added are lost). Returns ``model``."""
    names = [f"{prefix}.{name}" if prefix else name
             for prefix, module in model.named_modules() if isinstance(module, ReferenceBank)
             for name, _ in module.named_buffers(recurse=False)]
    ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(dict.fromkeys(ignored + names)))
    return model


def rank_seed(seed, rank):
    """The reservoir seed of ``rank`` > 0: the rank-th draw of a generator seeded with ``seed``,
    so that no rank of one seed repeats a rank of a neighbouring seed (as seed + rank would)."""
    return int(torch.randint(2**62, (rank,), generator=torch.Generator().manual_seed(seed))[-1])


class ShardedReferenceBank(ReferenceBank):
    """A ``ReferenceBank`` whose references are split over the ranks of ``group``.

    Built like ``ReferenceBank`` (every rank then ``add``s its own labelled batches;
    each rank holds ceil(capacity_per_class / world) slots per class), or with
    ``from_tensors`` from the same tensors on every rank. Global indices are
    rank * local_slots + local slot (or the row of the tensors given to
    ``from_tensors``). ``match`` and ``classwise_max`` are collectives: every rank
    must call them, with its own queries; a query that fails its check, or a match
    that fails, on one rank makes every rank raise (an error before the call on one
    rank leaves the others waiting in it, as in any collective). Scores are float32 (float64
    for a float64 bank). Inside a model wrapped in DistributedDataParallel, call
    ``keep_shards_out_of_ddp(model)`` first. A ``state_dict`` holds this rank's shard: load it
    on the same rank (another rank's is refused, as is one without ``shard_rank``: a plain
    ``ReferenceBank``'s, which every shard would hold, or an older refmatch's). The ring and
    reservoir policies act per shard, on the features that rank added (a class that only one
    rank sees gets that rank's slots only); the reservoir of rank r > 0 draws with
    ``rank_seed(seed, r)``. ``len(bank)`` (and so ``bool(bank)``) is a collective too;
    ``class_counts`` and ``memory_bytes`` describe this rank's shard. It saves memory, not
    compute: each rank matches every rank's queries against its shard.

    Example:
        >>> bank = ShardedReferenceBank.from_tensors(reference, labels, metric="cosine")
        >>> result = bank.match(my_queries)     # same as one process with the whole bank
    """

    LATE_KEYS = ReferenceBank.LATE_KEYS + ("shard_rank",)

    def __init__(self, dim, num_classes, capacity_per_class, *args, group=None, **kwargs):
        world = _world_size(group)
        capacity_per_class = as_int("capacity_per_class", capacity_per_class)
        if capacity_per_class < 1:
            raise ValueError(f"capacity_per_class must be a positive int, got {capacity_per_class}")
        super().__init__(dim, num_classes, -(-capacity_per_class // world), *args, **kwargs)
        rank = dist.get_rank(group)
        if rank:  # the same draws on every rank would keep the same steps' rows on each shard
            self._generator.manual_seed(rank_seed(self._generator.initial_seed(), rank))
            if self.policy == "reservoir":
                self.generator_state.copy_(self._generator.get_state())
        self._own_shard(group, rank * self.features.shape[0])

    @classmethod
    def from_tensors(cls, reference, labels, num_classes=None, metric="cosine", ignore_index=255, group=None):
        """This rank's contiguous slice of ``reference`` [M, D] / ``labels`` [M],
        given the same tensors on every rank; ``num_classes``, ``metric`` and ``ignore_index`` as
        ``ReferenceBank.from_tensors`` takes them, ``group`` the process group (None: the default)."""
        world, rank = _world_size(group), dist.get_rank(group)
        # Checked whole, as every rank holds the same tensors: a bad row in one rank's slice
        # would make that rank alone raise and leave the others waiting in their first match.
        check_reference_rows(reference, labels)
        ignore_index = as_int("ignore_index", ignore_index, optional=True)
        if num_classes is None:  # from all labels: a rank's slice may lack the top class
            num_classes = inferred_num_classes(labels, ignore_index)
        check_label_values(labels, ignore_index, as_int("num_classes", num_classes))
        start, stop = reference.shape[0] * rank // world, reference.shape[0] * (rank + 1) // world
        bank = super().from_tensors(reference[start:stop], labels[start:stop], num_classes, metric, ignore_index)
        bank._own_shard(group, start, layout=reference.shape[0])
        return bank

    def _own_shard(self, group, index_offset, layout=None):
        # layout: what every rank must share to give each shard its global indices, the slots
        # per class of a growable bank or the rows of from_tensors' tensors.
        self.group, self.index_offset = group, index_offset
        self.layout = self.capacity if layout is None else layout
        # The rank whose shard the buffers hold, first of them: DDP's broadcast of rank 0's buffers
        # overwrites it whatever the shards' sizes, as does loading another rank's state_dict.
        marker = torch.tensor(dist.get_rank(group), device=self.features.device)
        others = {name: self._buffers.pop(name) for name in list(self._buffers)}
        self.register_buffer("shard_rank", marker)
        self._buffers.update(others)

    def __deepcopy__(self, memo):
        """A copy (an EMA teacher's, say) shares the process group, which cannot be copied."""
        memo[id(self.group)] = self.group
        clone = memo[id(self)] = type(self).__new__(type(self))
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def extra_repr(self):
        """ReferenceBank's, of this rank's shard (its capacity and counts): no collective and no
        process group needed, so a meta bank or one printed after teardown prints too."""
        return f"shard of rank {'?' if self.shard_rank.is_meta else int(self.shard_rank)}: {super().extra_repr()}"

    def _load_from_state_dict(self, state_dict, prefix, *args):
        if prefix + "shard_rank" not in state_dict:
            # A plain ReferenceBank's would load its rows into every shard: each row once per rank.
            args[4].append(f"{prefix or 'the '}state_dict has no shard_rank: a ReferenceBank's, whose rows every "
                           "shard would hold (rebuild the sharded bank with from_tensors from its features and "
                           "labels, or add() again), or a ShardedReferenceBank's saved by an older refmatch (set "
                           f"state_dict['{prefix}shard_rank'] = torch.tensor(rank) on the rank that saved it)")
            return
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _agreed(self, compute, *counts):
        """``compute()`` on this rank, then one all_reduce of whether it raised and of the
        ``counts`` (0-d tensors, summed over ranks): when it raised on any rank, every rank
        raises, so none is left waiting in a later collective. Returns (result, sums)."""
        try:
            result, error = compute(), None
        except Exception as caught:  # re-raised below, after the other ranks heard of it
            result, error = None, caught
        flags = torch.stack([self.counts.new_tensor(int(error is not None)), *counts])
        dist.all_reduce(flags, group=self.group)
        failed, *sums = flags.tolist()
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"the call failed on {failed} other rank(s) (see their error): every rank stops here")
        return result, sums

    def _on_every_rank(self, compute):
        """``compute()`` here; where it raises on any rank, every rank raises (``_agreed``)."""
        return self._agreed(compute)[0]

    def _settings(self, k, call):
        """What every rank's bank and call must agree on, as int64 codes by name."""
        try:
            asked = operator.index(k)
        except TypeError:
            asked = -1  # as_int raises on this rank, so on every rank
        precision = torch.finfo(self.features.dtype)
        return {"call": CALLS.index(call), "k": asked if 1 <= asked < 2 ** 62 else -1, "dim": self.dim,
                "num_classes": self.num_classes,
                "dtype": precision.bits * 1000 - round(math.log2(precision.eps)), "metric": METRICS.index(self.metric),
                "ignore_index": -(2 ** 62) if self.ignore_index is None else self.ignore_index,
                "fixed (from_tensors)": int(self.capacity is None), "layout (capacity or rows)": self.layout,
                "policy": POLICIES.index(self.policy), "downsample": DOWNSAMPLING.index(self.downsample)}

    def _checked_everywhere(self, query, k=1, call="match"):
        """``query`` checked and cast as ReferenceBank does (None for ``len``), and the features
        stored over all ranks; every rank raises when a rank's query or k fails its check, the
        ranks' banks, calls (``CALLS``) or k differ, or a rank holds another rank's shard."""
        foreign = (self.shard_rank != dist.get_rank(self.group)).long()
        query, (stored, foreign) = self._agreed(
            lambda: (query if query is None else self._checked_query(query), as_int("k", k))[0],
            self.counts.sum(), foreign)
        settings = self._settings(k, call)
        codes = self.counts.new_tensor(list(settings.values()))
        spread = torch.cat([codes, -codes])  # one MAX reduction gives the largest and the smallest
        dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=self.group)
        differ = [name for name, high, low in zip(settings, spread[:codes.numel()].tolist(),
                                                  spread[codes.numel():].tolist()) if high != -low]
        out_of_step = "; or a rank skipped a call (after catching its error, say): every rank makes the same calls"
        if "call" in differ:
            raise ValueError(f"the ranks made different calls (this rank: {call}){out_of_step}, in the same order "
                             "(len(bank) and bool(bank) are calls too)")
        if differ == ["k"]:
            raise ValueError(f"the ranks asked for different k (this rank k={k}): every rank must call match "
                             f"with the same k{out_of_step}")
        if differ:
            mine = f"dim={self.dim}, num_classes={self.num_classes}, dtype={self.features.dtype}, " \
                   f"metric={self.metric!r}, ignore_index={self.ignore_index}, layout={self.layout}"
            raise ValueError(f"the ranks' banks or calls differ in {', '.join(differ)} (this rank: {mine}, k={k}): "
                             "build the bank with the same arguments (from_tensors: the same tensors) on every rank")
        if foreign:
            raise RuntimeError(f"{foreign} rank(s) hold another rank's shard: DistributedDataParallel copied rank "
                               "0's buffers (call refmatch.distributed.keep_shards_out_of_ddp(model) before wrapping "
                               "the model), or a state_dict saved on another rank was loaded")
        if call != "len":
            self._require_features(stored, k)  # every rank raises alike
        return query, stored

    def __len__(self):
        """References stored over all ranks (a collective, checked as match is: len on one
        rank alone paired with another rank's match and returned a wrong count)."""
        return self._checked_everywhere(None, call="len")[1]

    def _gathered_queries(self, query):
        """Every rank's [N, D] query rows, one after another (each padded to the largest N), and
        the slice that holds this rank's."""
        rows = query if query.dim() == 2 else query.permute(0, 2, 3, 1).reshape(-1, query.shape[1])
        count = torch.tensor([rows.shape[0]], device=rows.device)
        counts = [int(c) for c in _gather(count, self.group)]
        padded = rows.new_zeros(max(counts), rows.shape[1])
        padded[: rows.shape[0]] = rows
        start = dist.get_rank(self.group) * padded.shape[0]
        return torch.cat(_gather(padded, self.group)), slice(start, start + rows.shape[0])

    def match(self, query, k=1, backend="auto"):
        """``refmatch.match`` of ``query`` ([N, D] or [B, D, h, w], this rank's) against the whole
        sharded bank; a collective. Results as ``ReferenceBank.match``'s ([N, k] or
        [B, k, h, w]; [N] / [B, h, w] for k = 1), with global ``index``."""
        all_rows, mine = self._gathered_queries(self._checked_everywhere(query, k)[0])
        score = all_rows.new_full((all_rows.shape[0], k), worst_score(self.metric),
                                  dtype=accumulation_dtype(self.features.dtype))
        index = torch.full_like(score, -1, dtype=torch.long)
        label = torch.full_like(index, -1)
        local_k = min(k, self._stored())  # an empty shard contributes no candidates
        found, _ = self._agreed(lambda: ReferenceBank.match(self, all_rows, k=local_k, backend=backend)
                                if local_k else None)
        if local_k:
            score[:, :local_k] = found.score.reshape(-1, local_k)
            hit = found.index.reshape(-1, local_k)
            index[:, :local_k] = torch.where(hit >= 0, hit + self.index_offset, -1)
            label[:, :local_k] = found.label.reshape(-1, local_k)
        # Shards in rank order, each best first with ties by index.
        candidates = [torch.cat(_gather(t, self.group), dim=1)[mine] for t in (score, index, label)]
        best = keep_best(candidates[0], k, *candidates[1:], larger_wins=self.metric != "l2")
        return MatchResult(*(_shape_result(values, query, k) for values in best))

    def classwise_max(self, query, backend="auto"):
        """Best score per class over all shards: [N, C] for rows, [B, C, h, w] for maps."""
        all_rows, mine = self._gathered_queries(self._checked_everywhere(query, call="classwise_max")[0])
        scores, _ = self._agreed(lambda: ReferenceBank.classwise_max(self, all_rows, backend=backend)
                                 if self._stored() else
                                 all_rows.new_full((all_rows.shape[0], self.num_classes), worst_score(self.metric),
                                                   dtype=accumulation_dtype(self.features.dtype)))
        op = dist.ReduceOp.MIN if self.metric == "l2" else dist.ReduceOp.MAX
        dist.all_reduce(scores, op=op, group=self.group)
        return rows_as_query(scores[mine], query)
