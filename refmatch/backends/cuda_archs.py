"""Which cards a build of ``refmatch._C`` has code for, from the archs ``build_info`` lists."""
import re

ARCH = re.compile(r"(\d+)(\d)(a?)")  # "80", "90a", "100a", "120": major, minor, arch-specific


def built_code_serves(archs, capability):
    """Whether a build for ``archs`` ("80,90a" as build_info says) has code that runs on a card
    of ``capability``: a plain "XY" (SASS plus PTX) serves every card from X.Y up, the PTX being
    compiled by the driver; an arch-specific "XYa" serves X.Y alone. An entry in another form
    (a build made with CMake by hand: "80-real", "native") is taken to serve: no claim is made."""
    for arch in archs.split(","):
        parsed = ARCH.fullmatch(arch.strip())
        if parsed is None:
            return True
        built = (int(parsed[1]), int(parsed[2]))
        if (tuple(capability) == built) if parsed[3] else (tuple(capability) >= built):
            return True
    return False


def missing_code_reason(archs, device, capability):
    """Why a build for ``archs`` cannot run on ``device``, or None."""
    if built_code_serves(archs, capability):
        return None
    wanted = f"{capability[0]}{capability[1]}" + ("a" if capability == (9, 0) else "")  # 90a: the wgmma kernel too
    rebuild = f"REFMATCH_CUDA_ARCHS=\"{archs.replace(',', ';')};{wanted}\""
    return (f"refmatch._C was compiled for {archs}, which has no code for {device} (compute capability "
            f"{capability[0]}.{capability[1]}); rebuild with {rebuild}")
