"""The fused CPU walk's threads (csrc/cpu_team.cpp): torch's own OpenMP team where torch has
one, else threads started per call (and in a forked child); the same results on either, from
one thread or several, from callers matching at once; a part's failure raised, not lost."""
import os
import threading

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
        cpu_topk._team["library"] = ""
    elif not cpu_topk.openmp_team():
        pytest.skip("torch here has no OpenMP runtime the walk can use")
    yield request.param
    cpu_topk._team["library"] = None  # asked again: re-attached where it was


def fused_match(query, reference, metric, k=1):
    """match_chunked of [N, D] rows: (score [N, k], index [N, k])."""
    return match_chunked(query.T[None, :, :, None], reference, None, k, metric)


def test_the_walk_runs_on_torchs_openmp_runtime_where_torch_has_one():
    openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    library = cpu_topk.openmp_team()
    assert bool(library) == openmp and cpu_topk.native_module().openmp_team_library() == library
    if openmp and os.path.exists("/proc/self/maps"):  # the very file this process has mapped
        assert library in open("/proc/self/maps").read() and "omp" in os.path.basename(library)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_team_stays_with_its_calling_thread_and_started_threads_end(team):
    """libgomp keeps a calling thread's team until that thread ends; started threads end
    with the call. So a fresh thread's walk leaves a new thread behind only on the team (threads
    other tests left may end meanwhile: new ones are counted, not all)."""
    query, reference = torch.randn(300, 8), torch.randn(200, 8)
    counts = []

    def walk():
        before = set(os.listdir("/proc/self/task"))
        fused_match(query, reference, "dot")
        counts.append(len(set(os.listdir("/proc/self/task")) - before))

    caller = threading.Thread(target=walk)
    caller.start()
    caller.join()
    assert counts == [1 if team == "openmp team" else 0]


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


def test_a_failing_part_is_raised_and_the_next_call_runs(team):
    # Both parts fail to allocate their [512, D] sub-block buffers (D = 2^40); the call raises
    # once, and the next call runs.
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
