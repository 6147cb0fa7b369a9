"""Loading a state dict from a user's file, safely, and checking it against a model.

Formats: ``.safetensors`` (tensors only, by construction) and PyTorch ``.pth`` / ``.pt`` /
``.bin`` / ``.ckpt`` files read with ``torch.load(weights_only=True)``, which refuses pickled
Python objects other than tensors and plain containers (a torchvision checkpoint is a plain
state dict). A checkpoint that wraps the state dict as ``{"state_dict": ...}`` or
``{"model": ...}`` is unwrapped, and a ``module.`` prefix (``nn.DataParallel``) is removed.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nnbound.errors import InputError

_SHOW = 5  # mismatching keys named in an error
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, on the CPU.

    Raises:
        InputError: missing file, unreadable or corrupt content, a pickle with anything but
            tensors and containers (refused by ``weights_only=True``), or no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"{path}: not a readable .safetensors file ({exc})") from None
    else:
        try:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4"
                warnings.simplefilter("ignore")
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = _GLOBAL.search(str(exc))
            if found is None:
                raise InputError(
                    f"{path}: not a readable PyTorch weights file (not a state dict saved by "
                    "torch.save, or corrupt)"
                ) from None
            raise InputError(
                f"{path}: refused: the file holds Python objects other than tensors "
                f"({found.group(1)}); torch.load(weights_only=True) will not run them and "
                "nnbound loads plain state dicts only"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{path}: not a readable PyTorch weights file ({first[:200]})"
            ) from None
    return _as_state_dict(raw, path)


def _as_state_dict(raw: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(raw, Mapping):
        for key in ("state_dict", "model"):
            inner = raw.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, Tensor) for v in inner.values())
            ):
                raw = inner
                break
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(
            f"{path}: expected a state dict (name -> tensor), got {type(raw).__name__}"
        )
    bad = [str(k) for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"{path}: entries that are not tensors: {', '.join(bad[:_SHOW])}")
    state = dict(raw)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """:class:`InputError` naming the first missing, unexpected and wrongly shaped keys when
    ``state`` does not fit ``model`` exactly (``num_batches_tracked`` may be absent: old
    checkpoints lack it and torch fills it in)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for what, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", shapes),
    ):
        if keys:
            more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:_SHOW])}{more}")
    if parts:
        raise InputError(f"{source} does not fit the architecture: " + "; ".join(parts))
    floats = [
        k
        for k, v in state.items()
        if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())
    ]
    if floats:
        raise InputError(f"{source}: NaN or inf values in {', '.join(floats[:_SHOW])}")


def load_into(model: nn.Module, state: Mapping[str, Tensor], source: str) -> nn.Module:
    """Check ``state`` against ``model`` (:func:`check_state_dict`) and load it strictly."""
    check_state_dict(model, state, source)
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:  # dtype casts that torch refuses, etc.
        raise InputError(f"{source}: cannot be loaded ({str(exc).splitlines()[0]})") from None
    return model


__all__ = ["check_state_dict", "load_into", "read_state_dict"]
