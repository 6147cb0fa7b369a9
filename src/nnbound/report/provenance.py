"""Provenance carried by every JSON/CSV record: what produced the numbers."""

from __future__ import annotations

import platform
from typing import Any

import torch


def provenance(
    *, device: torch.device | str, dtype: torch.dtype, seed: int | None = None
) -> dict[str, Any]:
    from nnbound import __version__

    return {
        "nnbound_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "seed": seed,
    }
