"""The processes of a run under torchrun: each one's device, the process group, and work that
rank 0 does alone while the others wait for its outcome."""
import os
import pickle

import torch
import torch.distributed as dist

from .progress import launched_rank


def pick_device(name, local_rank, local_world):
    """One GPU per process under torchrun (NCCL cannot share one between ranks)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but torch {torch.__version__} sees no CUDA device: train with "
                         "device=cpu (or device=auto)")
    if device.type == "cuda" and device.index is None:
        if local_world > torch.cuda.device_count():
            raise ValueError(f"{local_world} processes on this node but {torch.cuda.device_count()} CUDA "
                             "device(s): start at most one process per GPU, or train with device=cpu (gloo)")
        device = torch.device("cuda", local_rank)
    return device


def join_process_group(device_name):
    """This process's device (``pick_device``); under torchrun (WORLD_SIZE > 1) it also joins
    the process group, before anything touches the run folder, so that rank 0 can tell every
    rank when it cannot take the folder (``on_rank_zero``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", "0")),
                         int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave_process_group():
    """Tear the process group down, where there is one: a process that exits holding a gloo
    group aborts ("terminate called without an active exception", SIGABRT) after its error line."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_rank_zero(compute, share_result=True):
    """``compute()`` on rank 0 alone. When distributed, rank 0's exception is raised on every
    rank (the same exception, so a user's mistake reads as one line there too) instead of
    leaving them to wait for rank 0 at their next collective; with ``share_result`` every rank
    returns rank 0's result, else the others return None. One collective when distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    box, error = [None], None
    if launched_rank() == 0:
        try:
            result = compute()
            box[0] = ("value", result if share_result else None)
        except Exception as caught:
            error, box[0] = caught, ("error", _portable(caught))
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise value
    return result if launched_rank() == 0 else value


def _portable(error):
    """``error`` itself where it survives pickling unchanged, else a RuntimeError naming it."""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if str(copy) == str(error):  # an __init__ that formats its argument would format it twice
            return copy
    except Exception:
        pass
    return RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")
