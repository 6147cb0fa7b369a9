"""Import a sequential ONNX model into the network IR.

The importer walks the graph as a *chain*: every node must read the previous node's output
(the "network value") plus constants (initializers or ``Constant`` nodes). Each node is turned
into IR layers, and element-wise affine nodes with constants (``Add``/``Sub``/``Mul``/``Div``,
``BatchNormalization``) are folded into the preceding ``Dense``/``Conv2d``/``Normalize`` layer
where that is exact, or become a ``Normalize`` layer otherwise (e.g. right at the input).

Shapes: the importer evaluates the graph as ONNX would on a batch of one. It tracks two shapes:
the *ONNX shape* (the full ONNX tensor shape at batch size 1) and the *IR shape* (the per-sample
shape the IR layers produce so far). Reshape-like nodes (``Flatten``, ``Reshape``, ``Squeeze``,
``Unsqueeze``, layout-preserving ``Transpose``) only change the ONNX shape, since the data order
is unchanged; a ``Reshape`` layer is emitted only when a convolution needs its ``(C, H, W)``
input, a ``Flatten`` only before a ``Dense`` layer and at the end (the IR output is always flat,
``(num_outputs,)``).

The IR input shape is the graph input's shape without the batch axis (a rank-1 input has no
batch axis). A vector-like input (at most one axis larger than 1, e.g. ACAS Xu's ``[1, 1, 1, 5]``
or mnist_fc's ``[1, 784, 1]``) becomes flat ``(n,)``, so that networks meant to be fed a flat
vector take one; files written by :func:`nnbound.network.to_onnx.save_onnx` carry their exact
IR input shape in the metadata.

This module holds :func:`from_onnx` and re-exports what other modules import from it; the
pieces live in sibling modules so each stays small: file loading and metadata keys
(:mod:`~nnbound.network.onnx_files`), node attributes (:mod:`~nnbound.network.onnx_attrs`),
the layer builder (:mod:`~nnbound.network.onnx_chain_builder`), the importer's state and walk
(:mod:`~nnbound.network.onnx_chain_state`, :mod:`~nnbound.network.onnx_chain_importer`) and the
operator handlers (``onnx_chain_nonlinear``, ``onnx_chain_layout``, ``onnx_chain_math``,
``onnx_chain_spatial``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from nnbound.errors import ModelFormatError, NnboundError, UnsupportedError
from nnbound.network.network import Network
from nnbound.network.onnx_chain_importer import SUPPORTED_OPS, _Importer
from nnbound.network.onnx_files import (
    META_INPUT_RANGE,
    META_INPUT_SHAPE,
    META_META,
    META_NAME,
    _first_line,
    _load_model,
    _meta_json,
    _opset,
)

if TYPE_CHECKING:
    from nnbound.network.graph import Graph


def from_onnx(
    source: str | Path | onnx.ModelProto,
    *,
    input_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Network | Graph:
    """Import a sequential ONNX model as a :class:`Network` (any other model as a
    :class:`~nnbound.network.graph.Graph`: see :mod:`nnbound.network.from_onnx_graph`).

    Args:
        source: path of an ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        input_range: the data domain ``(low, high)`` of the inputs; overrides the range stored
            in the file's metadata by :func:`~nnbound.network.to_onnx.save_onnx` (if any).
        name: the network's name (default: the stored name, else the file stem).

    Returns:
        A network whose ``input_shape`` is the graph input's shape without the batch axis
        (vector-like inputs such as ``[1, 1, 1, 5]`` or ``[1, 784, 1]`` become flat ``(n,)``)
        and whose output is flat ``(num_outputs,)``. Tensors are float32, or float64 when every
        floating-point initializer of the model is float64.

    Raises:
        ModelFormatError: missing, unreadable, corrupt or truncated file; an invalid graph.
        UnsupportedError: an operator outside :data:`SUPPORTED_OPS`, or a graph that is not a
            chain (the message names the op and the node).
        InputError: NaN or inf weights.
    """
    model, path = _load_model(source)
    where = str(path) if path is not None else "ONNX model"
    if not model.HasField("graph") or not model.graph.node:
        raise ModelFormatError(
            f"{where}: ONNX model has no graph nodes (empty, truncated or not an ONNX file)"
        )
    if not model.opset_import:
        # required by the ONNX spec; a file cut right after its graph lacks it
        raise ModelFormatError(f"{where}: ONNX model declares no opset (truncated or invalid)")
    props = {p.key: p.value for p in model.metadata_props}
    if input_range is None and META_INPUT_RANGE in props:
        stored = _meta_json(props, META_INPUT_RANGE, where)
        if stored is not None:
            if not (isinstance(stored, list) and len(stored) == 2):
                raise ModelFormatError(f"{where}: metadata {META_INPUT_RANGE!r} is not [lo, hi]")
            input_range = (float(stored[0]), float(stored[1]))
    try:
        importer = _Importer(model, where)
        input_shape = importer.input_shapes()[1]
        if META_INPUT_SHAPE in props:
            # the exact IR input shape of a network exported by save_onnx
            stored_shape = _meta_json(props, META_INPUT_SHAPE, where)
            if (
                isinstance(stored_shape, list)
                and all(isinstance(d, int) and d > 0 for d in stored_shape)
                and math.prod(stored_shape) == math.prod(input_shape)
            ):
                input_shape = tuple(stored_shape)
        builder = importer.run(input_shape)
    except UnsupportedError:
        # Not a chain (branches, residual connections, several inputs or outputs) or an
        # operator only the graph IR has: the graph importer takes the whole model as a
        # Graph, which duck-types Network (or raises what it cannot take either).
        from nnbound.network.from_onnx_graph import from_onnx_graph

        return from_onnx_graph(path or model, name=name, input_range=input_range)
    except NnboundError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # onnx/protobuf quirks of a damaged model that slipped through the checks above
        raise ModelFormatError(f"{where}: invalid ONNX model ({_first_line(exc)})") from None

    if META_META in props:
        stored_meta = _meta_json(props, META_META, where)
        if not isinstance(stored_meta, dict):
            raise ModelFormatError(f"{where}: metadata {META_META!r} is not a JSON object")
        meta = {str(k): str(v) for k, v in stored_meta.items()}
    else:
        producer = f"{model.producer_name} {model.producer_version}".strip()
        opset = _opset(model)
        meta = {"source_format": "onnx"}
        if path is not None:
            meta["source"] = str(path)
        if producer:
            meta["onnx_producer"] = producer
        if opset is not None:
            meta["onnx_opset"] = str(opset)
    if name is None:
        name = props.get(META_NAME) or (path.stem if path is not None else None)
        name = name or model.graph.name or "network"

    all_double = importer.float_dtypes == {np.dtype(np.float64)}
    dtype = torch.float64 if all_double else torch.float32
    net = Network(
        layers=tuple(builder.layers),
        input_shape=tuple(input_shape),
        input_range=input_range,
        name=name,
        meta=meta,
    )
    return net.to(dtype=dtype)


__all__ = ["SUPPORTED_OPS", "from_onnx"]
