"""Reading ONNX files: loading a model with clear errors for missing, empty, corrupt or
truncated files, reading its tensors and opset, and the metadata keys nnbound writes.

Both ONNX importers (:mod:`nnbound.network.from_onnx` for chains,
:mod:`nnbound.network.from_onnx_graph` for graphs) and the exporter
(:mod:`nnbound.network.to_onnx`) use these, so a file fails the same way whichever reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nnbound.errors import InputError, ModelFormatError

# Metadata keys written by ``save_onnx`` and read back here.
META_INPUT_RANGE = "nnbound.input_range"
META_INPUT_SHAPE = "nnbound.input_shape"
META_NAME = "nnbound.name"
META_META = "nnbound.meta"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load_model(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(source, onnx.ModelProto):
        return source, None
    if not isinstance(source, (str, Path)):
        raise InputError(
            f"from_onnx expects a path or an onnx.ModelProto, got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise ModelFormatError(f"ONNX model file not found: {path}")
    if not path.is_file():
        raise ModelFormatError(f"ONNX model path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelFormatError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        # protobuf's DecodeError, OSError for missing external data, onnx's own errors...: any
        # failure here means the file is not a readable ONNX model.
        raise ModelFormatError(
            f"{path}: not a valid ONNX model (corrupt or truncated file: {_first_line(exc)})"
        ) from None
    return model, path


def _to_array(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception as exc:
        # A truncated file can leave a tensor whose raw data is shorter than its dims say.
        raise ModelFormatError(f"ONNX {what} is unreadable ({_first_line(exc)})") from None


def _opset(model: onnx.ModelProto) -> int | None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return None


def _meta_json(props: dict[str, str], key: str, where: str) -> Any:
    try:
        return json.loads(props[key])
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelFormatError(f"{where}: metadata {key!r} is not valid JSON ({exc})") from None
