"""nnbound's own model format: one ``.safetensors`` file whose header metadata holds a small
JSON description of the layers (no pickle, so loading an untrusted file cannot run code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nnbound.errors import ModelFormatError
from nnbound.network.layers import (
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    Layer,
    MaxPool2d,
    Normalize,
    Reshape,
)
from nnbound.network.network import Network
from nnbound.report.atomic import atomic_path

FORMAT_NAME = "nnbound-network"
FORMAT_VERSION = 1


def _layer_spec(layer: Layer) -> dict[str, Any]:
    if isinstance(layer, Dense):
        return {"type": "dense"}
    if isinstance(layer, Conv2d):
        return {
            "type": "conv2d",
            "stride": list(layer.stride),
            "padding": list(layer.padding),
            "dilation": list(layer.dilation),
            "groups": layer.groups,
        }
    if isinstance(layer, AvgPool2d):
        return {
            "type": "avgpool2d",
            "kernel_size": list(layer.kernel_size),
            "stride": list(layer.stride or layer.kernel_size),
            "padding": list(layer.padding),
            "ceil_mode": layer.ceil_mode,
            "count_include_pad": layer.count_include_pad,
        }
    if isinstance(layer, MaxPool2d):
        return {
            "type": "maxpool2d",
            "kernel_size": list(layer.kernel_size),
            "stride": list(layer.stride or layer.kernel_size),
            "padding": list(layer.padding),
            "dilation": list(layer.dilation),
            "ceil_mode": layer.ceil_mode,
        }
    if isinstance(layer, Flatten):
        return {"type": "flatten"}
    if isinstance(layer, Reshape):
        return {"type": "reshape", "shape": list(layer.shape)}
    if isinstance(layer, Normalize):
        return {"type": "normalize"}
    if isinstance(layer, Activation):
        return {"type": "activation", "name": layer.name, "alpha": layer.alpha}
    raise TypeError(f"not an IR layer: {type(layer).__name__}")


def network_to_json(net: Network) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": net.name,
        "input_shape": list(net.input_shape),
        "input_range": list(net.input_range) if net.input_range is not None else None,
        "meta": dict(net.meta),
        "layers": [_layer_spec(layer) for layer in net.layers],
    }


def save_network(net: Network, path: str | Path) -> Path:
    """Write ``net`` to ``path`` (a ``.safetensors`` file) and return the path."""
    path = Path(path)
    tensors = {
        f"{i}.{key}": t.detach().to("cpu").contiguous()
        for i, layer in enumerate(net.layers)
        for key, t in layer.tensors().items()
    }
    with atomic_path(path) as tmp:  # never a half-written model under the final name
        save_file(tensors, str(tmp), metadata={"nnbound": json.dumps(network_to_json(net))})
    return path


def _ints(v: Any) -> tuple[int, int]:
    """A pair of integers from the header (TypeError -- a malformed header -- otherwise)."""
    if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, int) for x in v):
        raise TypeError(f"expected two integers, got {v!r}")
    return (int(v[0]), int(v[1]))


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _build_layer(i: int, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Layer:
    def t(key: str) -> torch.Tensor:
        try:
            return tensors[f"{i}.{key}"]
        except KeyError:
            raise ModelFormatError(
                f"layer {i} ({spec.get('type')}) has no tensor {key!r}"
            ) from None

    kind = spec.get("type")
    if kind == "dense":
        return Dense(t("weight"), t("bias"))
    if kind == "conv2d":
        return Conv2d(
            t("weight"),
            t("bias"),
            tuple(spec["stride"]),
            tuple(spec["padding"]),
            tuple(spec["dilation"]),
            int(spec["groups"]),
        )
    if kind == "avgpool2d":
        return AvgPool2d(
            _ints(spec["kernel_size"]),
            _ints(spec["stride"]),
            _ints(spec["padding"]),
            _flag(spec.get("ceil_mode", False)),
            _flag(spec.get("count_include_pad", True)),
        )
    if kind == "maxpool2d":
        return MaxPool2d(
            _ints(spec["kernel_size"]),
            _ints(spec["stride"]),
            _ints(spec["padding"]),
            _ints(spec.get("dilation", [1, 1])),
            _flag(spec.get("ceil_mode", False)),
        )
    if kind == "flatten":
        return Flatten()
    if kind == "reshape":
        return Reshape(tuple(int(s) for s in spec["shape"]))
    if kind == "normalize":
        return Normalize(t("mean"), t("std"))
    if kind == "activation":
        return Activation(str(spec["name"]), float(spec.get("alpha", 0.0)))
    raise ModelFormatError(f"layer {i} has unknown type {kind!r}")


def load_network(path: str | Path) -> Network:
    """Read a network written by :func:`save_network`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"model file not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from None
    if "nnbound" not in metadata:
        raise ModelFormatError(f"{path}: safetensors file has no nnbound architecture header")
    try:
        spec = json.loads(metadata["nnbound"])
        if spec.get("format") != FORMAT_NAME:
            raise ModelFormatError(f"{path}: header format is {spec.get('format')!r}")
        layers = tuple(_build_layer(i, s, tensors) for i, s in enumerate(spec["layers"]))
        rng = spec.get("input_range")
        return Network(
            layers=layers,
            input_shape=tuple(spec["input_shape"]),
            input_range=tuple(rng) if rng is not None else None,
            name=str(spec.get("name", path.stem)),
            meta=spec.get("meta", {}),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, ModelFormatError):
            raise
        raise ModelFormatError(f"{path}: malformed nnbound header ({exc})") from None
