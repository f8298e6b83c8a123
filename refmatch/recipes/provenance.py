"""What a run's numbers came from: refmatch's version and commit, torch, the device and the CPU
threads. torch's own kernels (convolutions, reductions) round differently by device and by thread
count, so a run repeats to the bit only where these repeat; they are kept beside every result."""
import logging
import os
import platform

import torch

from ..bench_files import cpu_model, git_commit
from ..version import __version__


def environment(device):
    """{refmatch, commit, torch, python, device, threads, world_size} of this process, training
    or labelling on ``device`` (a torch.device)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"refmatch": __version__, "commit": git_commit(), "torch": str(torch.__version__),  # not TorchVersion
            "python": platform.python_version(), "device": f"{device.type} ({name})",
            "threads": torch.get_num_threads(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


def _rounding_changes(earlier, now):
    """What differs between two environments in ways that change how torch rounds (threads: on
    the CPU; another world size is refused on loading, so not named here)."""
    keys = ["device", "torch"] + (["threads"] if now["device"].startswith("cpu") else [])
    return [f"{key} {earlier.get(key)} -> {now[key]}" for key in keys if earlier.get(key) != now[key]]


def run_environments(resumed, device, warn=True):
    """The environments a run has trained in, each with the step it took over from
    (``from_step``): a resumed run's saved list (None: a new run), plus this process's where any
    of it differs (new code, say). Where that changes how torch rounds, ``warn`` (rank 0: the
    others' warnings would print twice) names it: the run then differs slightly from an
    uninterrupted one."""
    now = environment(device)
    logging.getLogger("refmatch").info("environment: refmatch %s (commit %s), torch %s, %s, %d CPU threads",
                                       now["refmatch"], now["commit"], now["torch"], now["device"], now["threads"])
    if resumed is None:
        return [{"from_step": 0, **now}]
    earlier = list(resumed.get("environments", []))  # none in a checkpoint of an older refmatch
    last = {key: value for key, value in earlier[-1].items() if key != "from_step"} if earlier else None
    changed = _rounding_changes(last, now) if last else []
    if changed and warn:
        logging.getLogger("refmatch").warning(
            "resumed with %s since step %d: torch rounds differently there, so the result will differ slightly "
            "from an uninterrupted run (resume where the run trained to repeat it to the bit)", ", ".join(changed),
            resumed["step"])
    return earlier if last == now else earlier + [{"from_step": resumed["step"], **now}]
