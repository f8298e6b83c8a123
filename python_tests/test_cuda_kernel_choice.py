"""Which CUDA kernel a call asks for, decided in Python before the launch (no GPU needed):
wgmma on compute capability 9.0 with an sm_90a build unless REFMATCH_CUDA_HOPPER=0."""
import os

import pytest
import torch

from refmatch.backends import cuda_backend

DEVICE = torch.device("cuda", 0)


@pytest.fixture
def card(monkeypatch):
    """Sets the capability and build that hopper_enabled sees."""
    def set_card(capability, built_for_hopper=True):
        monkeypatch.setattr(cuda_backend, "_capability", lambda index: capability)
        monkeypatch.setattr(cuda_backend, "_built_for_hopper", lambda: built_for_hopper)
    monkeypatch.delenv("REFMATCH_CUDA_HOPPER", raising=False)
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
    with cuda_backend.hopper_kernel(enabled=enabled):
        assert cuda_backend.hopper_enabled(DEVICE) is enabled
    assert os.environ.get("REFMATCH_CUDA_HOPPER") == previous
