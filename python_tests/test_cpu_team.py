"""The fused CPU walk's threads (csrc/cpu_team.cpp): torch's own OpenMP team where torch has
one, else threads started per call (and in a forked child); the same results on either, from
one thread or several, from callers matching at once; a part's failure raised after all end."""
import os

import pytest
import torch

from refmatch.backends import cpu_topk
from refmatch.backends.torch_backend import match_chunked

pytestmark = pytest.mark.skipif(not cpu_topk.native_isas(), reason="refmatch._C has no fused top-k for this CPU")


@pytest.fixture(params=["openmp team", "started threads"])
def team(request, monkeypatch):
    """Each way the walk's threads come; two of them, whatever this machine has."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    if request.param == "started threads":
        cpu_topk.native_module().detach_openmp_team()
        monkeypatch.setitem(cpu_topk._team, "attached", False)
    elif not cpu_topk.openmp_team():
        pytest.skip("torch here has no OpenMP runtime the walk can use")
    yield request.param
    cpu_topk._team["attached"] = None  # asked again: re-attached where it was


def fused_match(query, reference, metric, k=1):
    """match_chunked of [N, D] rows: (score [N, k], index [N, k])."""
    return match_chunked(query.T[None, :, :, None], reference, None, k, metric)


def test_the_walk_runs_on_torchs_openmp_team_where_torch_has_one():
    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    assert cpu_topk.openmp_team() == openmp
    assert cpu_topk.native_module().openmp_team_attached() == openmp


def test_a_library_without_openmp_is_not_attached():
    module = cpu_topk.native_module()
    assert not module.attach_openmp_team("/no/such/library.so")
    cpu_topk._team["attached"] = None  # the next walk attaches again


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_several_threads_give_one_threads_results(team, metric, monkeypatch):
    query, distinct = torch.randn(700, 24), torch.randn(800, 24)
    reference = torch.cat([distinct, distinct[:700]])  # exact ties: the lower index wins
    several = fused_match(query, reference, metric, k=5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    one = fused_match(query, reference, metric, k=5)
    assert torch.equal(several[0], one[0]) and torch.equal(several[1], one[1])


def test_callers_matching_at_once_agree(team):
    from concurrent.futures import ThreadPoolExecutor

    query, reference = torch.randn(400, 16), torch.randn(900, 16)
    expected = fused_match(query, reference, "l2", k=3)
    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda _: fused_match(query, reference, "l2", k=3), range(8)))
    assert all(torch.equal(score, expected[0]) and torch.equal(index, expected[1]) for score, index in results)


def test_a_failing_part_is_raised_after_every_part_ends(team):
    # Every part fails to allocate its [512, D] sub-block buffer (D = 2^40); the call raises
    # once, after both parts have ended, and the next call runs.
    module, state = cpu_topk.native_module(), torch.zeros(128, 2)
    with pytest.raises(MemoryError):
        module.cpu_topk_rows(cpu_topk.native_isas()[0], 0, 128, 2**40, 0, 0, 0, 1.0, 0, 1, state.data_ptr(),
                             state.data_ptr(), 0, 128, 0, 2)
    query, reference = torch.randn(300, 8), torch.randn(200, 8)
    assert torch.equal(fused_match(query, reference, "dot")[1], (query @ reference.T).argmax(1, keepdim=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_walks_on_threads_of_its_own(team):
    import multiprocessing

    query, reference = torch.randn(500, 8), torch.randn(300, 8)
    expected = fused_match(query, reference, "dot")[1]  # the parent's team exists from here on
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply_async(match_chunked, (query.T[None, :, :, None], reference, None, 1, "dot"))
        assert torch.equal(child.get(timeout=60)[1], expected)
