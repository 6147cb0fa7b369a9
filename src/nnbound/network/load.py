"""One entry point for every model source: :func:`load_model` and :func:`save_model`.

``load_model`` picks the importer from the spec:

======================================  ============================================
spec                                    importer
======================================  ============================================
a built-in name (``mnist-kw``)          :func:`~nnbound.network.builtin.load_builtin`
a catalogue name (``resnet18``)         :func:`~nnbound.catalogue.graph.catalogue_graph`
``*.safetensors``                       :func:`~nnbound.network.native.load_network`
``*.onnx``                              ``nnbound.network.from_onnx.from_onnx``
``*.h5``/``*.hdf5``/HDF5 signature      :func:`~nnbound.network.from_keras_h5.from_keras_h5`
``*.pt``/``*.pth`` TorchScript archive  :func:`~nnbound.network.from_torch.load_torchscript`
``*.pt2`` (or a torch.export archive)   :func:`~nnbound.network.from_torch.load_exported`
======================================  ============================================

An existing file always wins over a built-in name; files with another or no extension are
recognised by their content (HDF5 signature, safetensors header, PyTorch archive entries).
A plain PyTorch state dict is refused with a message saying how to pair it with its
``nn.Module`` (a state dict has no architecture).
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

from nnbound.catalogue.registry import is_catalogue_name
from nnbound.errors import InputError, ModelFormatError
from nnbound.network.builtin import BUILTIN_MODELS, load_builtin
from nnbound.network.from_keras_h5 import from_keras_h5, is_hdf5
from nnbound.network.from_torch import (
    load_exported,
    load_state_dict,
    load_torchscript,
    torch_archive_kind,
)
from nnbound.network.graph import Graph
from nnbound.network.native import load_network, save_network
from nnbound.network.network import Network

__all__ = ["load_model", "save_model"]

_TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".ckpt", ".bin")


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < 100_000_000


def _looks_like_onnx(path: Path) -> bool:
    """ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08."""
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == b"\x08"
    except OSError:
        return False


def _with_overrides(
    net: Network, input_shape: Any, input_range: tuple[float, float] | None, path: Any
) -> Network:
    if input_shape is not None and tuple(int(s) for s in input_shape) != net.input_shape:
        raise InputError(
            f"{path}: the model's input shape is {net.input_shape}, not {tuple(input_shape)}"
        )
    if input_range is not None:
        net = replace(net, input_range=tuple(input_range))
    return net


def _state_dict_error(path: Path) -> ModelFormatError:
    sd = load_state_dict(path)  # raises its own clear error if the file is not a state dict
    return ModelFormatError(
        f"{path}: is a PyTorch state dict ({len(sd)} tensors) with no architecture; build "
        "the nn.Module, call module.load_state_dict(nnbound.network.from_torch."
        "load_state_dict(path)) and convert it with from_torch(module, input_shape), or save "
        "it as TorchScript (torch.jit.save) / torch.export (.pt2) / ONNX"
    )


def load_model(
    spec: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    input_range: tuple[float, float] | None = None,
) -> Network | Graph:
    """Load a network from a built-in name or a model file (format chosen as described in the
    module docstring), or a catalogue architecture's graph (random weights, see
    :func:`_catalogue_graph`).

    Args:
        spec: a built-in model name (:data:`~nnbound.network.builtin.BUILTIN_MODELS`) or a path.
        input_shape: one input's shape without the batch axis; required for TorchScript
            archives that do not store it, otherwise checked against the model's own.
        input_range: overrides the data domain ``(low, high)`` stored with the model
            (Keras files default to ``(-0.5, 0.5)``).

    Raises:
        ModelFormatError: missing file ("model file not found: PATH"), unreadable or
            unrecognised content, or a state dict without architecture.
        UnsupportedError: a layer or operation nnbound cannot represent.
        InputError: unknown built-in name / inconsistent ``input_shape``.
    """
    path = Path(spec)
    if not path.is_file():
        if isinstance(spec, str) and spec in BUILTIN_MODELS:
            return _with_overrides(load_builtin(spec), input_shape, input_range, spec)
        if isinstance(spec, str) and is_catalogue_name(spec):
            return _catalogue_graph(spec, input_shape, input_range)
        if isinstance(spec, str) and not path.suffix and "/" not in spec and "\\" not in spec:
            raise ModelFormatError(
                f"model file not found: {path} (and no built-in model of that name; built-in "
                f"models: {', '.join(sorted(BUILTIN_MODELS))})"
            )
        raise ModelFormatError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _with_overrides(load_network(path), input_shape, input_range, path)
    if suffix == ".onnx":
        return _load_onnx(path, input_shape, input_range)
    if suffix in (".h5", ".hdf5", ".keras_h5") or is_hdf5(path):
        # the Keras default (-0.5, 0.5) is the reference's pixel convention
        net = from_keras_h5(path, **({} if input_range is None else {"input_range": input_range}))
        return _with_overrides(net, input_shape, None, path)
    kind = torch_archive_kind(path)
    if kind == "torchscript":
        return load_torchscript(path, input_shape, input_range=input_range)
    if kind == "export" or suffix == ".pt2":
        return load_exported(path, input_shape, input_range=input_range)
    if suffix in _TORCH_SUFFIXES or kind == "pickle":
        raise _state_dict_error(path)
    if _looks_like_safetensors(path):
        return _with_overrides(load_network(path), input_shape, input_range, path)
    if _looks_like_onnx(path):
        return _load_onnx(path, input_shape, input_range)
    raise ModelFormatError(
        f"{path}: unrecognised model format (expected .safetensors, .onnx, Keras .h5, "
        "TorchScript .pt/.pth, torch.export .pt2, or a built-in model name)"
    )


def _catalogue_graph(
    name: str, input_shape: tuple[int, ...] | None, input_range: tuple[float, float] | None
) -> Graph:
    """Catalogue architecture ``name`` with RANDOM weights (seed 0) as a graph on ``[0, 1]``
    pixels, ``input_shape`` ``(3, N, N)`` choosing the image size (default the
    architecture's). For trained weights use :func:`nnbound.catalogue.catalogue_graph`."""
    from nnbound.catalogue.graph import catalogue_graph

    size = None
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
            raise InputError(f"{name}: input_shape must be (3, N, N), got {shape}")
        size = shape[1]
    if input_range is not None and tuple(input_range) != (0.0, 1.0):
        raise InputError(f"{name}: catalogue models take [0, 1] pixels, not {input_range}")
    return catalogue_graph(name, image_size=size)


def _load_onnx(
    path: Path, input_shape: tuple[int, ...] | None, input_range: tuple[float, float] | None
) -> Network:
    from nnbound.network.from_onnx import from_onnx  # written alongside; imported on use

    net = from_onnx(path, input_range=input_range)
    return _with_overrides(net, input_shape, None, path)


def save_model(net: Network, path: str | Path) -> Path:
    """Write ``net`` to ``path``: ``.safetensors`` (nnbound's native format, exact) or
    ``.onnx`` (for other tools). Returns the path.

    Raises:
        InputError: any other extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return save_network(net, path)
    if suffix == ".onnx":
        from nnbound.network.to_onnx import save_onnx  # written alongside; imported on use

        return Path(save_onnx(net, path))
    raise InputError(
        f"cannot save a model as {path.name!r}: use a .safetensors (native) or .onnx file name"
    )
