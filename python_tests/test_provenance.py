"""What a run records of its environment, and the warning when a resume changes it."""
import logging

import torch

import refmatch
from refmatch.recipes.provenance import environment, run_environments

CPU = torch.device("cpu")


def test_a_new_run_records_this_process(caplog):
    with caplog.at_level(logging.INFO, logger="refmatch"):
        (recorded,) = run_environments(None, CPU)
    assert recorded == {"from_step": 0, **environment(CPU)}
    assert recorded["refmatch"] == refmatch.__version__ and type(recorded["torch"]) is str  # weights_only loads it
    assert f"{torch.get_num_threads()} CPU threads" in caplog.text


def test_a_resume_on_another_thread_count_warns_and_is_recorded(caplog):
    earlier = {"from_step": 0, **environment(CPU), "threads": torch.get_num_threads() + 1}
    with caplog.at_level(logging.WARNING, logger="refmatch"):
        recorded = run_environments({"step": 80, "environments": [earlier]}, CPU)
    assert recorded[0] == earlier and recorded[1]["from_step"] == 80
    assert recorded[1]["threads"] == torch.get_num_threads()
    assert (f"resumed with threads {earlier['threads']} -> {torch.get_num_threads()} since step 80: torch rounds "
            "differently there") in caplog.text


def test_a_resume_where_the_run_trained_adds_nothing(caplog):
    earlier = [{"from_step": 0, **environment(CPU)}]
    with caplog.at_level(logging.WARNING, logger="refmatch"):
        assert run_environments({"step": 5, "environments": earlier}, CPU) == earlier
    assert not caplog.records


def test_an_older_checkpoint_without_environments_starts_the_list_at_its_step():
    assert run_environments({"step": 7}, CPU) == [{"from_step": 7, **environment(CPU)}]


def test_a_resume_with_new_code_is_recorded_without_a_warning(caplog):
    """Another commit rounds alike: recorded, not warned about."""
    earlier = [{"from_step": 0, **environment(CPU), "commit": "0000000"}]
    with caplog.at_level(logging.WARNING, logger="refmatch"):
        recorded = run_environments({"step": 5, "environments": earlier}, CPU)
    assert recorded == earlier + [{"from_step": 5, **environment(CPU)}] and not caplog.records


def test_only_the_rank_that_logs_warns(caplog):
    """Ranks above 0 have no log handlers, so Python printed their warning too."""
    earlier = [{"from_step": 0, **environment(CPU), "torch": "0.0"}]
    with caplog.at_level(logging.WARNING, logger="refmatch"):
        run_environments({"step": 5, "environments": earlier}, CPU, warn=False)
    assert not caplog.records
