"""PyTorch files without an architecture: what a zip archive holds
(:func:`torch_archive_kind`, used by :mod:`nnbound.network.load` to pick an importer) and the
tensors of a state dict (:func:`load_state_dict`).

Kept apart from the graph walkers because reading a file must never run pickle code
(``weights_only=True``) and its refusals are about the file, not about operations.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import ModelFormatError
from nnbound.network.torch_checks import _first_line


def torch_archive_kind(path: str | Path) -> str | None:
    """What a PyTorch zip archive holds: ``"torchscript"``, ``"export"`` (torch.export ``.pt2``),
    ``"pickle"`` (``torch.save`` zip format), or ``None`` when ``path`` is no zip (e.g. the
    legacy ``torch.save`` format)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(
        n.endswith(("/archive_format", "serialized_exported_program.json"))
        or ("/models/" in n and n.endswith(".json"))
        for n in names
    ):
        return "export"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return None


def _require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"model file not found: {p}")
    return p


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            sd = dict(obj)
            # nn.DataParallel checkpoints prefix every key with "module."
            if all(k.startswith("module.") for k in sd):
                sd = {k[len("module.") :]: v for k, v in sd.items()}
            return sd
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap_state_dict(obj[key], path)
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise ModelFormatError(
            f"{path}: no state dict (a mapping of names to tensors) found; top-level keys: {keys}"
        )
    raise ModelFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a PyTorch state dict file (``torch.save(model.state_dict(), path)``).

    Reads both the zip and the legacy format with ``weights_only=True`` (no arbitrary pickle
    code runs), unwraps checkpoints that hold the state dict under a key such as
    ``"state_dict"`` or ``"model"``, and strips ``nn.DataParallel``'s ``"module."`` prefix.
    Tensors are on the CPU.

    Raises:
        ModelFormatError: missing, corrupt or truncated file, a TorchScript/export archive, a
            pickled whole model, or no state dict inside.
    """
    p = _require_file(path)
    kind = torch_archive_kind(p)
    if kind == "torchscript":
        raise ModelFormatError(
            f"{p}: is a TorchScript archive, not a state dict (use load_torchscript)"
        )
    if kind == "export":
        raise ModelFormatError(
            f"{p}: is a torch.export program, not a state dict (use load_exported)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails on bad bytes with many exception types
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise ModelFormatError(
                f"{p}: contains pickled Python objects ({found.group(1)}; a whole pickled "
                "model?) that cannot be loaded safely; save model.state_dict() or a "
                "TorchScript/torch.export archive"
            ) from None
        msg = "weights-only unpickling failed" if "Weights only" in str(exc) else _first_line(exc)
        raise ModelFormatError(f"{p}: not a readable PyTorch file ({msg})") from None
    return _unwrap_state_dict(obj, p)
