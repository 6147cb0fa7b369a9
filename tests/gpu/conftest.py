"""Fixtures of the CPU = accelerator tests (see ``gpu_cases``): ``dev`` is the second device,
CUDA when present, else every test skips with the reason; ``NNBOUND_TEST_SECOND_DEVICE=cpu``
runs them CPU against CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
for folder in (HERE.parent, HERE):  # helpers / graph_factory, then gpu_cases
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from gpu_cases import second_device_params  # noqa: E402


@pytest.fixture(params=second_device_params())
def dev(request: pytest.FixtureRequest) -> torch.device:
    """The device whose results must equal the CPU's."""
    return torch.device(request.param)
