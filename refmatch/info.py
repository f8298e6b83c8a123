"""``python -m refmatch.info``: versions, compiled archs and the backend table."""
import argparse
import platform
import sys

import torch

from .backends import backends
from .backends.cuda_backend import native_module
from .version import __version__


def _triton_version():
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _native_summary():
    module = native_module()
    if module is None:
        return "not built"
    info = module.build_info()
    if not info["cuda"]:
        return f"built ({info['compiler']}), CPU only"
    runtime = info["cuda_runtime_version"]
    archs = ", ".join(f"sm_{arch}" for arch in info["cuda_archs"].split(","))
    return f"built ({info['compiler']}), CUDA runtime {runtime // 1000}.{runtime % 1000 // 10}, archs {archs}"


def _device_lines():
    """Per CUDA device: name, compute capability, and the backend ``backend="auto"`` runs a
    k = 1 match of D = 128 on there in bfloat16 (cosine, the default metric, and dot) and in
    float32 (cosine, at the current matmul precision), with Triton's reason where it declined."""
    from .backends import _BACKENDS, MatchProblem, select
    from .backends.scoring import tf32_allowed

    precision = "TF32" if tf32_allowed(torch.float32) else "exact"
    lines = []
    for index in range(torch.cuda.device_count()):
        device = torch.device("cuda", index)
        major, minor = torch.cuda.get_device_capability(index)
        picks, reasons = [], []
        for dtype, metric, name in ((torch.bfloat16, "cosine", "bfloat16 cosine"), (torch.bfloat16, "dot", "dot"),
                                    (torch.float32, "cosine", f"float32 ({precision}) cosine")):
            problem = MatchProblem(device, dtype, 1, metric, 128)
            picks.append(f"{name} on {select(problem, 'auto').name}")
            declined = _BACKENDS["triton"].decline_reason(problem)
            reasons += [declined] if declined and declined not in reasons else []
        why = "".join(f" (triton: {reason})" for reason in reasons)
        lines.append(f"{str(device):<8} {torch.cuda.get_device_name(index)}, sm_{major}{minor}: "
                     f"backend='auto' runs {', '.join(picks)}{why}")
    return lines


def report():
    """The info text as one string."""
    cuda = torch.version.cuda or "none"
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    lines = [
        f"refmatch {__version__}",
        f"python   {sys.version.split()[0]} ({platform.machine()})",
        f"torch    {torch.__version__} (CUDA {cuda}; devices: {', '.join(devices) or 'none'})",
        f"triton   {_triton_version()}",
        f"_C       {_native_summary()}",
        "",
        f"{'backend':<8} {'available':<10} reason",
    ]
    for status in backends():
        lines.append(f"{status.name:<8} {'yes' if status.available else 'no':<10} {status.reason}")
    devices = _device_lines()
    return "\n".join(lines + ([""] + devices if devices else []))


def main(argv=None):
    """Print ``report()``; ``--help`` says what it prints."""
    parser = argparse.ArgumentParser(prog="refmatch info", description="Versions, the compiled CUDA archs of "
                                     "refmatch._C, which backends can run here, with the reason when not, and per GPU "
                                     "the backend backend='auto' runs there.")
    parser.parse_args(argv)
    print(report(), flush=True)


if __name__ == "__main__":  # as ``refmatch info``: one-line errors, a closed pipe ends quietly
    from refmatch.__main__ import main as command_line

    sys.argv[1:1] = ["info"]
    sys.exit(command_line())
