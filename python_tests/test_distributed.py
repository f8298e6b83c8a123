"""ShardedReferenceBank: 2 gloo processes give exactly the single-process results (on features
whose scores are exact), ties included; misuse raises on every rank."""
import copy
import datetime
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from refmatch import ReferenceBank
from refmatch.distributed import ShardedReferenceBank, keep_shards_out_of_ddp

WORLD = 2


def shared_inputs():
    generator = torch.Generator().manual_seed(7)
    # Rows of four +-1 entries have norm 2, so even cosine scores are exact: ties
    # are real and every process must break them alike.
    signs = torch.randint(0, 2, (61, 6), generator=generator).float() * 2 - 1
    keep = torch.rand(61, 6, generator=generator).argsort(dim=1) < 4
    reference = signs * keep
    reference[40:50] = reference[5:15]  # duplicates across the two shards
    labels = torch.randint(0, 4, (61,), generator=generator)
    queries = [torch.randint(-2, 3, (9 + 4 * rank, 6), generator=generator).float() for rank in range(WORLD)]
    maps = torch.randint(-2, 3, (2, 6, 3, 5), generator=generator).float()
    return reference, labels, queries, maps


def expected_results(metric, k):
    reference, labels, queries, maps = shared_inputs()
    whole = ReferenceBank.from_tensors(reference, labels, metric=metric)
    return [whole.match(query, k=k) for query in queries], whole.match(maps, k=k), \
        [whole.classwise_max(query) for query in queries], whole.classwise_max(maps)


def worker(rank, port, cases):
    # A short timeout turns a failure on one rank into an error on the other, not a hang.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    reference, labels, queries, maps = shared_inputs()
    for metric, k in cases:
        rows, on_maps, classwise, classwise_on_maps = expected_results(metric, k)
        bank = ShardedReferenceBank.from_tensors(reference, labels, metric=metric)
        assert bank.features.shape[0] in (30, 31)
        for got, want in zip(bank.match(queries[rank], k=k), rows[rank]):
            assert torch.equal(got, want), (metric, k, got, want)
        for got, want in zip(bank.match(maps, k=k), on_maps):
            assert torch.equal(got, want), (metric, k, "maps")
        got = bank.classwise_max(queries[rank])
        assert torch.equal(got, classwise[rank]), (metric, k, got - classwise[rank])
        got = bank.classwise_max(maps)  # [B, C, h, w], as one process's
        assert got.shape == classwise_on_maps.shape and torch.equal(got, classwise_on_maps), (metric, "maps")
    # A bank filled through add(): each rank adds its own batch.
    filled = ShardedReferenceBank(6, 3, capacity_per_class=8, dtype=torch.float32, metric="dot")
    assert filled.capacity == 4
    assert repr(filled).startswith(f"ShardedReferenceBank(shard of rank {rank}: dim=6, num_classes=3, "
                                   "capacity_per_class=4,")  # a shard's capacity, named as one
    assert "shard of rank ?: " in repr(ShardedReferenceBank(6, 3, capacity_per_class=8).to("meta"))
    features = torch.full((1, 6, 2, 2), float(rank + 1))
    filled.add(features, torch.zeros(1, 2, 2, dtype=torch.long))
    assert len(filled) == 8
    best = filled.match(torch.ones(3, 6))
    assert best.index.tolist() == [12] * 3  # rank 1's first slot: offset 12 (= 3 classes x 4)
    # One empty shard: the collectives still line up and rank 0's features win.
    lonely = ShardedReferenceBank(6, 3, capacity_per_class=8, dtype=torch.float32, metric="dot")
    if rank == 0:
        lonely.add(features, torch.ones(1, 2, 2, dtype=torch.long))
    assert lonely.match(torch.ones(2, 6), k=2).index.tolist() == [[4, 5]] * 2
    assert lonely.classwise_max(torch.ones(1, 6))[0, 1].item() == 6.0
    # k beyond the 4 features of all ranks together: every rank raises as one process
    # would, before any collective of the match, so the barrier below still lines up.
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= 4 \(stored features\), got k=5"):
        lonely.match(torch.ones(2, 6), k=5)
    # Each rank's reservoir draws with its own seed: the same draws kept the same steps' rows on every shard.
    sampled = ShardedReferenceBank(1, 1, capacity_per_class=8, dtype=torch.float32, metric="dot",
                                   policy="reservoir", seed=5)
    for step in range(10):
        sampled.add(torch.arange(4.0).view(1, 1, 2, 2) + 4 * step, torch.zeros(1, 2, 2, dtype=torch.long))
    kept = [torch.empty(4) for _ in range(WORLD)]
    dist.all_gather(kept, sampled.features[:, 0].sort().values)
    assert (sampled._generator.initial_seed() == 5) == (rank == 0) and not torch.equal(kept[0], kept[1])
    # Rows labelled ignore_index never match and count for no class, on every shard.
    ignored = labels.clone()
    ignored[::4] = 255
    sharded = ShardedReferenceBank.from_tensors(reference, ignored)
    whole = ReferenceBank.from_tensors(reference, ignored)
    assert sharded.num_classes == whole.num_classes == 4
    got, want = sharded.match(queries[rank], k=3), whole.match(queries[rank], k=3)
    assert (got.label != 255).all() and all(torch.equal(g, w) for g, w in zip(got, want))
    # Every check passed on this rank. gloo's teardown at interpreter exit aborts
    # now and then ("terminate called without an active exception", about 1 run
    # in 15 here), so wait for the other rank and leave without destructors.
    dist.barrier()
    os._exit(0)


def misuse_worker(rank, port):
    """float64 banks, a bad query on one rank, DDP around a sharded bank, another rank's state_dict."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    # float64 scores stay float64 through the merge: 1 + 1e-12 beats 1 only there.
    reference, labels = torch.tensor([[1.0], [1.0 + 1e-12]], dtype=torch.float64), torch.tensor([0, 1])
    found = ShardedReferenceBank.from_tensors(reference, labels, metric="dot").match(torch.ones(1, 1, dtype=torch.float64))
    assert found.label.tolist() == [1] and found.score.dtype == torch.float64
    lonely = ShardedReferenceBank.from_tensors(reference[1:], labels[1:], num_classes=2, metric="dot")  # rank 0: empty
    assert lonely.classwise_max(torch.ones(3, 1, dtype=torch.float64)).dtype == torch.float64
    # A query that fails its check on one rank stops every rank, none waits in a collective.
    bank = ShardedReferenceBank.from_tensors(torch.randn(6, 4), torch.tensor([0, 1, 2] * 2))
    if rank == 0:
        with pytest.raises(ValueError, match="query has D=5 channels"):
            bank.match(torch.randn(3, 5))
    else:
        with pytest.raises(RuntimeError, match="the call failed on 1 other rank"):
            bank.match(torch.randn(3, 4))
    # So do different k on the ranks (gloo aborted the process), or a k too large on one.
    for ks in ((2, 3), (1, 41), (2, 2 ** 63), (1, 3 * 2 ** 31 + 1)):
        with pytest.raises(ValueError, match=f"the ranks asked for different k .this rank k={ks[rank]}"):
            bank.match(torch.randn(3, 4), k=ks[rank])
    for k in (2 ** 63, 2 ** 40):  # too large on every rank: each says so, none overflows
        with pytest.raises(ValueError, match=f"k must satisfy 1 <= k <= 6 .stored features., got k={k}"):
            bank.match(torch.randn(3, 4), k=k)
    with pytest.raises((TypeError, RuntimeError), match="k must be an int, got str|1 other rank"):
        bank.match(torch.randn(3, 4), k=[2, "2"][rank])
    # A rank out of step (another call; len alone paired with a match and read a wrong count) is named.
    for calls in (("match", "classwise_max"), ("len", "match")):
        with pytest.raises(ValueError, match=f"the ranks made different calls .this rank: {calls[rank]}.; or a rank"):
            {"len": lambda: len(bank), "match": lambda: bank.match(torch.randn(3, 4), k=2),  # k differs too
             "classwise_max": lambda: bank.classwise_max(torch.randn(3, 4))}[calls[rank]]()
    # Banks built unlike on the ranks raise by name on every rank (another D or dtype aborted gloo;
    # another metric, capacity or set of rows gave wrong neighbours).
    labels6 = torch.tensor([0, 1, 2] * 2)
    unlike = [("metric", ShardedReferenceBank.from_tensors(torch.ones(6, 4), labels6, metric=["dot", "l2"][rank])),
              ("dim", ShardedReferenceBank.from_tensors(torch.ones(6, 4 + rank), labels6)),
              ("dtype", ShardedReferenceBank.from_tensors(torch.ones(6, 4, dtype=[torch.float32, torch.float64][rank]),
                                                          labels6)),
              ("layout", ShardedReferenceBank.from_tensors(torch.ones(6 + 2 * rank, 4),
                                                           torch.arange(6 + 2 * rank) % 3)),
              ("layout", ShardedReferenceBank(4, 3, capacity_per_class=[8, 6][rank])),
              ("policy", ShardedReferenceBank(4, 3, capacity_per_class=8, policy=["ring", "reservoir"][rank])),
              ("downsample", ShardedReferenceBank(4, 3, capacity_per_class=8, downsample=["majority", "pure"][rank]))]
    for name, unlike_bank in unlike:
        query = torch.ones(2, unlike_bank.dim, dtype=unlike_bank.features.dtype)
        with pytest.raises(ValueError, match=f"the ranks' banks or calls differ in {name} "):
            unlike_bank.match(query)
    # A rank whose last batch holds no images gets empty results, as one process does.
    empty = bank.match(torch.randn(1 - rank, 4, 3, 3), k=2)
    assert empty.index.shape == (1 - rank, 2, 3, 3)
    assert bank.classwise_max(torch.randn(1 - rank, 4, 3, 3)).shape == (1 - rank, 3, 3, 3)
    # So does a match that fails only where a shard holds features (rank 0's holds none here).
    if rank == 1:
        with pytest.raises(ValueError, match="backend must be"):
            lonely.match(torch.ones(3, 1, dtype=torch.float64), backend="nonexistent")
    else:
        with pytest.raises(RuntimeError, match="the call failed on 1 other rank"):
            lonely.match(torch.ones(3, 1, dtype=torch.float64), backend="nonexistent")
    # DDP copies rank 0's buffers over every rank unless told to leave the shards alone, for
    # shards of one size (8 rows) and of two (7 rows: 3 and 4).
    for rows, keep_out in ((8, False), (7, False), (8, True)):
        model = torch.nn.Module()
        model.head = torch.nn.Linear(2, 2)
        model.bank = ShardedReferenceBank.from_tensors(torch.arange(float(rows))[:, None].repeat(1, 2),
                                                       torch.tensor([0, 1] * 4)[:rows], metric="dot")
        if keep_out:
            keep_shards_out_of_ddp(model)
        torch.nn.parallel.DistributedDataParallel(model)
        if keep_out:
            assert model.bank.match(torch.ones(1, 2)).index.tolist() == [7]
        else:
            with pytest.raises(RuntimeError, match="1 rank.s. hold another rank's shard: DistributedDataParallel"):
                model.bank.match(torch.ones(1, 2))
    # A plain bank inside the wrapped model: DDP copied rank 0's over rank 1's, in silence.
    for keep_out in (False, True):
        plain = torch.nn.Module()
        plain.head = torch.nn.Linear(2, 2)
        plain.bank = ReferenceBank(2, 2, capacity_per_class=4, dtype=torch.float32)
        plain.bank.add(torch.ones(1, 2, 1, 1), torch.full((1, 1, 1), rank))  # rank r labels class r
        if keep_out:
            keep_shards_out_of_ddp(plain)
        torch.nn.parallel.DistributedDataParallel(plain)
        assert plain.bank.class_counts().tolist() == ([1, 0] if rank == 0 or not keep_out else [0, 1])
    state = [None] * WORLD
    dist.all_gather_object(state, model.bank.state_dict())
    with pytest.raises(RuntimeError, match=f"shard_rank: saved on rank {1 - rank}, this is rank {rank}"):
        model.bank.load_state_dict(state[1 - rank])  # an older refmatch's: a shape error, or the next match's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.bank.load_state_dict(state[rank])  # its own, with shard_rank: quiet
    # Without shard_rank: a plain bank's (its rows in every shard) or one saved by an older refmatch.
    older = {name: value for name, value in state[rank].items() if name != "shard_rank"}
    with pytest.raises(RuntimeError, match="state_dict has no shard_rank: a ReferenceBank's, whose rows every shard"):
        model.bank.load_state_dict(older)
    model.bank.load_state_dict({**older, "shard_rank": torch.tensor(rank)})  # as the error says
    assert model.bank.match(torch.ones(1, 2)).index.tolist() == [7]
    dist.barrier()
    os._exit(0)


def one_rank_error_worker(rank, port):
    """Errors that only one rank's data triggers raise on every rank, none waits in a collective."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    from refmatch import PseudoLabeler

    labels = torch.tensor([0, 1, 2, 0, 1, 5])  # 5: in rank 1's slice only
    with pytest.raises(ValueError, match="labels must be < num_classes=3 .or ignore_index=255., got 5: pass num_classes=6$"):
        ShardedReferenceBank.from_tensors(torch.randn(6, 4), labels, num_classes=3)
    labeler = PseudoLabeler(ShardedReferenceBank.from_tensors(torch.randn(6, 4), torch.tensor([0, 1, 2] * 2)))
    errors = ["features have D=5 channels, the bank holds D=4", "the call failed on 1 other rank"]
    with pytest.raises((ValueError, RuntimeError), match=errors[rank]):
        labeler(torch.randn(2, 4 + (1 - rank), 3, 3))  # rank 0's features are wrong
    assert labeler(torch.randn(rank, 4, 3, 3)).labels.shape == (rank, 3, 3)  # then it goes on
    # A shard saved at another world size (another shard size) is named as a possible cause.
    saved = ShardedReferenceBank(4, 3, capacity_per_class=8).state_dict()
    with pytest.raises(RuntimeError, match="capacity_per_class, or a shard of another world size"):
        ShardedReferenceBank(4, 3, capacity_per_class=16).load_state_dict(saved)
    dist.barrier()
    os._exit(0)


def subgroup_worker(rank, port, world):
    """Ranks 0 and 1 share a bank over their own group, rank 2 holds one alone in its group: a
    collective on the default group would wait for a rank that never joins it (a timeout)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    groups = [dist.new_group([0, 1]), dist.new_group([2])]  # every rank makes every group, in one order
    group = groups[rank // 2]
    if rank == 2:  # torch gives a rank outside a group an int
        with pytest.raises(ValueError, match="this rank is not in the process group: build the bank on the group"):
            ShardedReferenceBank(4, 3, capacity_per_class=8, group=groups[0])
    reference, labels, queries, maps = shared_inputs()
    bank = ShardedReferenceBank.from_tensors(reference, labels, metric="dot", group=group)
    assert bank.features.shape[0] in ((61,) if rank == 2 else (30, 31)) and bank.group is group
    whole = ReferenceBank.from_tensors(reference, labels, metric="dot")
    query = queries[rank % 2]
    for got, want in zip(bank.match(query, k=3), whole.match(query, k=3)):
        assert torch.equal(got, want), (rank, got, want)
    assert torch.equal(bank.classwise_max(maps), whole.classwise_max(maps))
    filled = ShardedReferenceBank(6, 3, capacity_per_class=8, dtype=torch.float32, metric="dot", group=group)
    filled.add(torch.full((1, 6, 2, 2), float(rank + 1)), torch.zeros(1, 2, 2, dtype=torch.long))
    assert len(filled) == (4 if rank == 2 else 8)
    teacher = copy.deepcopy(torch.nn.ModuleDict({"bank": filled}))  # an EMA teacher's copy of a model
    copied = teacher["bank"]
    assert copied.group is group and copied.features.nan_to_num(7).equal(filled.features.nan_to_num(7))  # NaN: empty
    assert copied.features.data_ptr() != filled.features.data_ptr() and len(copied) == len(filled)
    dist.barrier()
    os._exit(0)


def spawn(function, *args, world=WORLD):
    """``function(rank, port, *args)`` on ``world`` gloo processes."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as probe:  # a free loopback port for the TCP rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(function, args=(port, *args), nprocs=world, join=True)


def test_two_gloo_ranks_match_one_process():
    spawn(worker, [("dot", 1), ("l2", 1), ("cosine", 1), ("dot", 3), ("l2", 5)])


def test_misuse_raises_on_every_rank_and_float64_stays_float64():
    spawn(misuse_worker)


def test_an_error_of_one_ranks_data_raises_on_every_rank():
    spawn(one_rank_error_worker)


def test_a_bank_shards_over_its_own_group_only():
    spawn(subgroup_worker, 3, world=3)


def test_from_tensors_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group exists")
    with pytest.raises((RuntimeError, ValueError), match="process group"):
        ShardedReferenceBank.from_tensors(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


def test_rank_seeds_differ_across_ranks_and_neighbouring_seeds():
    """seed + rank made seed 0's rank 1 draw as seed 1's rank 0; huge and negative seeds fit too."""
    from refmatch.distributed import rank_seed

    seeds = {(seed, rank): seed if rank == 0 else rank_seed(seed, rank) for seed in range(4) for rank in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    for seed in (2**64 - 1, -1):
        torch.Generator().manual_seed(rank_seed(torch.Generator().manual_seed(seed).initial_seed(), 3))
