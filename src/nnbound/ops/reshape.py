"""Flatten and Reshape: change the shape, keep the data order (C-order). Allowed anywhere in
a graph. Node attrs: ``shape`` for reshape (per-sample, without the batch axis)."""

from nnbound.network.layers import Flatten, Reshape
from nnbound.ops.layer_backed import layer_op

FLATTEN = layer_op(
    "flatten",
    Flatten,
    onnx=("Flatten",),
    torch=("Flatten", "flatten"),
    keras=("Flatten",),
)
RESHAPE = layer_op(
    "reshape",
    Reshape,
    onnx=("Reshape", "Squeeze", "Unsqueeze"),
    torch=("view", "reshape", "Unflatten", "unflatten", "squeeze", "unsqueeze", "_unsafe_view"),
    keras=("Reshape",),
)

OPS = (FLATTEN, RESHAPE)
