"""Which CUDA kernel a call asks for, decided in Python before the launch (no GPU needed):
wgmma on compute capability 9.0 with an sm_90a build unless REFMATCH_CUDA_HOPPER=0, with
REFMATCH_CUDA_HOPPER_ROWS query rows per CTA (256 unless set), the query where
REFMATCH_CUDA_HOPPER_QUERY says and the bank loaded as REFMATCH_CUDA_HOPPER_LOADS says; top-k
there only where REFMATCH_CUDA_HOPPER_TOPK=wgmma."""
import os

import pytest
import torch

from refmatch.backends import cuda_backend, hopper_variants
from refmatch.backends.torch_screening import screen_switched_off

DEVICE = torch.device("cuda", 0)


@pytest.fixture
def card(monkeypatch):
    """Sets the capability and build that hopper_enabled sees."""
    def set_card(capability, built_for_hopper=True):
        monkeypatch.setattr(cuda_backend, "_capability", lambda index: capability)
        monkeypatch.setattr(cuda_backend, "_built_for_hopper", lambda: built_for_hopper)
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER", raising=False)
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER_ROWS", raising=False)
    return set_card


@pytest.mark.parametrize("capability, built_for_hopper, setting, enabled", [
    ((9, 0), True, None, True),    # the default on Hopper
    ((9, 0), True, "1", True),
    ((9, 0), True, "0", False),    # the opt-out
    ((9, 0), False, None, False),  # a build without sm_90a
    ((8, 0), True, None, False),
    ((10, 0), True, None, False),  # sm_90a code does not run on later cards
])
def test_hopper_enabled(card, monkeypatch, capability, built_for_hopper, setting, enabled):
    card(capability, built_for_hopper)
    if setting is not None:
        monkeypatch.setenv("REFMATCH_CUDA_HOPPER", setting)
    assert cuda_backend.hopper_enabled(DEVICE) is enabled


@pytest.mark.parametrize("previous", [None, "0", "1"])
@pytest.mark.parametrize("enabled", [False, True])
def test_hopper_kernel_block_sets_and_restores_the_variable(card, monkeypatch, previous, enabled):
    card((9, 0))
    if previous is not None:
        monkeypatch.setenv("REFMATCH_CUDA_HOPPER", previous)
    with hopper_variants.hopper_kernel(None if enabled else "mma.sync"):
        assert cuda_backend.hopper_enabled(DEVICE) is enabled
    assert os.environ.get("REFMATCH_CUDA_HOPPER") == previous


@pytest.mark.parametrize("setting, k, topk_kernel, rows", [
    (None, 1, None, 256),   # the default tile
    ("128", 1, None, 128),
    ("256", 1, None, 256),
    (None, 8, None, 0),
    ("256", 8, None, 0),    # top-k runs the mma.sync kernel by default
    ("256", 8, "mma.sync", 0),
    (None, 8, "wgmma", 256),  # top-k takes the k = 1 tiles (documented_hopper_kernel)
    ("128", 64, "wgmma", 128),
    (None, 1, "mma.sync", 256),  # k = 1 whatever the top-k setting
])
def test_hopper_rows(card, monkeypatch, setting, k, topk_kernel, rows):
    card((9, 0))
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER_TOPK", raising=False)
    if setting is not None:
        monkeypatch.setenv("REFMATCH_CUDA_HOPPER_ROWS", setting)
    if topk_kernel is not None:
        monkeypatch.setenv("REFMATCH_CUDA_HOPPER_TOPK", topk_kernel)
    assert cuda_backend.hopper_rows(DEVICE, k) == rows


def test_topk_setting_block_sets_restores_and_refuses(card, monkeypatch):
    card((9, 0))
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER_TOPK", raising=False)
    with hopper_variants.hopper_topk_kernel("wgmma"):
        assert cuda_backend.hopper_rows(DEVICE, 8) == 256
        with hopper_variants.hopper_kernel("mma.sync"):  # REFMATCH_CUDA_HOPPER=0 wins
            assert cuda_backend.hopper_rows(DEVICE, 8) == 0
    assert "REFMATCH_CUDA_HOPPER_TOPK" not in os.environ and cuda_backend.hopper_rows(DEVICE, 8) == 0
    card((8, 0))
    with hopper_variants.hopper_topk_kernel("wgmma"):
        assert cuda_backend.hopper_rows(DEVICE, 8) == 0
    with pytest.raises(ValueError, match="kernel must be one of 'mma.sync', 'wgmma'"):
        hopper_variants.hopper_topk_kernel("wgmma-256")


def test_hopper_rows_off_without_the_hopper_kernel(card, monkeypatch):
    card((9, 0))
    monkeypatch.setenv("REFMATCH_CUDA_HOPPER_ROWS", "256")
    monkeypatch.setenv("REFMATCH_CUDA_HOPPER", "0")
    assert cuda_backend.hopper_rows(DEVICE) == 0
    card((8, 0))
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER")
    assert cuda_backend.hopper_rows(DEVICE) == 0


@pytest.mark.parametrize("capability", [(9, 0), (8, 0)])  # refused on every card alike
@pytest.mark.parametrize("setting", ["64", "512", "two hundred", ""])
def test_bad_hopper_rows_are_named(card, monkeypatch, capability, setting):
    card(capability)
    monkeypatch.setenv("REFMATCH_CUDA_HOPPER_ROWS", setting)
    with pytest.raises(ValueError, match="REFMATCH_CUDA_HOPPER_ROWS must be one of '256', '128'"):
        cuda_backend.hopper_rows(DEVICE)


@pytest.mark.parametrize("name, test", [("REFMATCH_CUDA_HOPPER", lambda: cuda_backend.hopper_enabled(DEVICE)),
                                        ("REFMATCH_BF16_SCREEN", screen_switched_off)])
@pytest.mark.parametrize("setting", ["off", "false", ""])
def test_on_off_switches_refuse_what_they_do_not_read(card, monkeypatch, name, test, setting):
    """Read as ``!= "0"`` before, "off" and "false" left the wgmma kernel and the screen on."""
    card((9, 0))
    monkeypatch.setenv(name, setting)
    with pytest.raises(ValueError, match=f"{name} must be one of '1', '0', got '{setting}'"):
        test()
    monkeypatch.setenv(name, "0")
    assert test() is (name == "REFMATCH_BF16_SCREEN")


@pytest.mark.parametrize("previous", [None, "128", "256"])
@pytest.mark.parametrize("variant, rows", [("wgmma", 128), ("wgmma-256", 256)])
def test_hopper_kernel_block_sets_and_restores_the_rows(card, monkeypatch, previous, variant, rows):
    card((9, 0))
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER_ROWS", raising=False)
    if previous is not None:
        monkeypatch.setenv("REFMATCH_CUDA_HOPPER_ROWS", previous)
    with hopper_variants.hopper_kernel(variant):
        assert cuda_backend.hopper_rows(DEVICE) == rows and not hopper_variants.hopper_query_in_registers()
    assert os.environ.get("REFMATCH_CUDA_HOPPER_ROWS") == previous
    with hopper_variants.hopper_kernel():  # rows as set
        assert cuda_backend.hopper_rows(DEVICE) == int(previous or 256)


# Each on / off setting: (variable, its reader, the default, the other value, a refused
# spelling, the reader's answer by default).
SWITCHES = [("REFMATCH_CUDA_HOPPER_QUERY", hopper_variants.hopper_query_in_registers, "shared", "registers", "regs",
             False),
            ("REFMATCH_CUDA_HOPPER_LOADS", hopper_variants.hopper_tma_loads, "tma", "cp.async", "TMA", True),
            ("REFMATCH_CUDA_HOPPER_TOPK", hopper_variants.hopper_topk, "mma.sync", "wgmma", "WGMMA", False),
            ("REFMATCH_CUDA_HOPPER_TOPK_LISTS", hopper_variants.hopper_shared_lists, "shared", "global", "smem",
             True)]


@pytest.mark.parametrize("variable, reader, default, other, _, default_on", SWITCHES)
def test_hopper_switch_settings(monkeypatch, variable, reader, default, other, _, default_on):
    monkeypatch.delenv(variable, raising=False)
    assert reader() is default_on
    for value, on in ((default, default_on), (other, not default_on)):
        monkeypatch.setenv(variable, value)
        assert reader() is on


@pytest.mark.parametrize("variable, reader, default, other, bad, _", SWITCHES)
def test_bad_hopper_switch_is_named(monkeypatch, variable, reader, default, other, bad, _):
    monkeypatch.setenv(variable, bad)
    with pytest.raises(ValueError, match=f"{variable} must be one of '{default}', '{other}', got '{bad}'"):
        reader()


@pytest.mark.parametrize("variant, rows, registers, tma", [("wgmma-256-rs", 256, True, False),
                                                           ("wgmma-tma", 128, False, True)])
def test_hopper_kernel_block_sets_and_restores_the_switches(card, monkeypatch, variant, rows, registers, tma):
    card((9, 0))
    for variable, *_ in SWITCHES:
        monkeypatch.delenv(variable, raising=False)
    with hopper_variants.hopper_kernel(variant):
        assert cuda_backend.hopper_rows(DEVICE) == rows
        assert hopper_variants.hopper_query_in_registers() is registers and hopper_variants.hopper_tma_loads() is tma
    assert not any(variable in os.environ for variable, *_ in SWITCHES)


def test_variants_are_named_as_the_kernel_reports_them():
    expected = {}
    for loads, suffix in (("tma", "-tma"), ("cp.async", "")):
        expected.update({"wgmma-256" + suffix: (256, "shared", loads), "wgmma" + suffix: (128, "shared", loads),
                         "wgmma-256-rs" + suffix: (256, "registers", loads),
                         "wgmma-rs" + suffix: (128, "registers", loads)})
    assert hopper_variants.HOPPER_VARIANTS == expected
    assert next(iter(hopper_variants.HOPPER_VARIANTS)) == "wgmma-256-tma"  # the default, first


@pytest.mark.parametrize("dim, kernel", [(8, "wgmma-256-tma"), (128, "wgmma-256-tma"), (192, "wgmma-256-tma"),
                                         (200, "wgmma-tma"), (256, "wgmma-tma")])
def test_the_default_takes_256_rows_where_they_fit(dim, kernel):
    default = next(iter(hopper_variants.HOPPER_VARIANTS))
    assert hopper_variants.documented_hopper_kernel(default, dim) == kernel
    assert hopper_variants.default_hopper_kernels() == ("wgmma-256-tma", "wgmma-tma")


@pytest.mark.parametrize("variant", ["wgmma-128", "256", "", "mma"])
def test_unknown_variant_is_named(variant):
    before = dict(os.environ)
    with pytest.raises(ValueError, match="variant must be one of 'mma.sync', 'wgmma-256-tma', 'wgmma-tma', 'wgmma-256-rs-tma'"):
        with hopper_variants.hopper_kernel(variant):
            pass
    assert dict(os.environ) == before


@pytest.mark.parametrize("archs, capability, served", [
    ("80,90a", (8, 0), True), ("80,90a", (8, 9), True), ("80,90a", (9, 0), True), ("80,90a", (12, 0), True),
    ("90a", (8, 0), False), ("90a", (9, 0), True), ("90a", (10, 0), False), ("86", (8, 0), False),
    ("86", (8, 9), True), ("100a,120", (12, 0), True), ("100a", (12, 0), False), ("80-real", (7, 5), True)])
def test_built_code_serves_the_card(archs, capability, served):
    """Plain archs carry PTX the driver compiles for any later card; an "a" arch runs on its own
    only; an entry in a form setup.py never writes (CMake by hand) is not second-guessed."""
    from refmatch.backends.cuda_archs import built_code_serves

    assert built_code_serves(archs, capability) is served


@pytest.mark.parametrize("archs, built", [("80,90a", True), ("90a-real", True), ("90a-virtual", True),
                                          ("80,90", False), ("100a", False)])
def test_an_sm90a_build_is_read_from_every_form_of_the_arch_list(monkeypatch, archs, built):
    """CMake's "90a-real" carries the wgmma kernel as plainly as setup.py's "90a" (the C++ side
    looks for "90a" in the list too)."""
    monkeypatch.setattr(cuda_backend, "_build_archs", lambda: archs)
    assert cuda_backend._built_for_hopper() is built


@pytest.mark.parametrize("capability, archs, wanted", [
    ((8, 6), "90a", "90a;86"),
    ((9, 0), "100a", "100a;90a"),  # 90a, not 90: the wgmma kernel too
])
def test_a_card_the_build_has_no_code_for_is_declined_by_name(card, monkeypatch, capability, archs, wanted):
    from types import SimpleNamespace

    card(capability)
    monkeypatch.setattr(cuda_backend, "_build_archs", lambda: archs)
    problem = SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16, k=1, op="match",
                              metric="cosine", dim=64, num_classes=0)
    reason = cuda_backend.CudaBackend.decline_reason(SimpleNamespace(status=lambda: (True, "stand-in")), problem)
    assert reason == (f"refmatch._C was compiled for {archs}, which has no code for cuda:0 (compute capability "
                      f'{capability[0]}.{capability[1]}); rebuild with REFMATCH_CUDA_ARCHS="{wanted}"')
