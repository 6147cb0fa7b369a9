"""The IR layers of an ONNX -> chain import as they accumulate (:class:`_Builder`).

It tracks two shapes: the ONNX shape at batch size 1 and the per-sample shape the IR layers
produce so far, so reshape-like nodes only change the former and a ``Reshape`` layer is written
only when a layer needs a particular view. Element-wise affine nodes with constants are folded
into the preceding ``Dense`` / ``Conv2d`` / ``Normalize`` layer here, where that is exact.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from nnbound.errors import UnsupportedError
from nnbound.network.layers import Conv2d, Dense, Flatten, Layer, Normalize, Reshape, Shape


def _compact(t: np.ndarray) -> np.ndarray:
    """Reduce every axis along which ``t`` is constant to size 1, then drop leading size-1 axes
    (keeping at least one), so per-channel constants stay ``(C, 1, 1)`` instead of ``(C, H, W)``.
    The result still broadcasts to ``t.shape``."""
    for axis in range(t.ndim):
        if t.shape[axis] > 1:
            first = np.take(t, [0], axis=axis)
            if np.array_equal(t, np.broadcast_to(first, t.shape)):
                t = first
    while t.ndim > 1 and t.shape[0] == 1:
        t = t[0]
    return np.ascontiguousarray(t)


def _torch(a: np.ndarray) -> torch.Tensor:
    # a copy: the input may be a read-only broadcast view or share memory with the ONNX model
    return torch.from_numpy(np.array(a, dtype=np.float64, order="C"))


class _Builder:
    """Accumulates IR layers while tracking the ONNX shape (batch 1) and the IR shape."""

    def __init__(self, onnx_shape: Shape, ir_shape: Shape) -> None:
        self.shape: Shape = onnx_shape  # the ONNX tensor shape at batch size 1
        self.ir_shape: Shape = ir_shape  # the per-sample shape the IR layers produce so far
        self.layers: list[Layer] = []
        self.out_shapes: list[Shape] = []  # IR output shape of each layer

    def append(self, layer: Layer, out_shape: Shape) -> None:
        self.layers.append(layer)
        self.out_shapes.append(tuple(out_shape))
        self.ir_shape = tuple(out_shape)

    def materialize(self, shape: Shape) -> None:
        """Make the IR produce exactly ``shape`` (same number of elements)."""
        if self.ir_shape != tuple(shape):
            self.append(Reshape(tuple(shape)), shape)

    def flatten(self) -> None:
        if len(self.ir_shape) != 1:
            self.append(Flatten(), (math.prod(self.ir_shape),))

    def dense(self, matrix: np.ndarray, out_onnx_shape: Shape) -> None:
        self.flatten()
        w = _torch(matrix)
        self.append(Dense(w, torch.zeros(w.shape[0], dtype=torch.float64)), (int(w.shape[0]),))
        self.shape = tuple(out_onnx_shape)

    # -- element-wise affine with a constant -----------------------------------------------
    def _fold_target(self) -> int | None:
        """Index of the last layer that is not a pure reshape (whose output an element-wise
        operation after trailing Flatten/Reshape layers still acts on), or None."""
        i = len(self.layers) - 1
        while i >= 0 and isinstance(self.layers[i], (Flatten, Reshape)):
            i -= 1
        return i if i >= 0 else None

    def elementwise(self, op: str, c_full: np.ndarray, label: str) -> None:
        """Apply ``x <op> c`` with ``op`` in add/sub/mul/div and ``c`` already broadcast to the
        ONNX shape: folded into the preceding Dense/Conv2d/Normalize where exact, else a new
        Normalize layer."""
        assert c_full.shape == self.shape
        t = self._fold_target()
        layer = self.layers[t] if t is not None else None
        if isinstance(layer, Dense):
            v = _torch(c_full.reshape(-1))
            w, b = layer.weight, layer.bias
            if op == "add":
                b = b + v
            elif op == "sub":
                b = b - v
            elif op == "mul":
                w, b = w * v[:, None], b * v
            else:
                w, b = w / v[:, None], b / v
            self.layers[t] = Dense(w, b)
            return
        if isinstance(layer, Conv2d):
            per = _compact(c_full.reshape(self.out_shapes[t]))
            if per.size == 1 or per.shape == (self.out_shapes[t][0], 1, 1):
                v = _torch(np.broadcast_to(per.reshape(-1), (self.out_shapes[t][0],)))
                w, b = layer.weight, layer.bias
                if op == "add":
                    b = b + v
                elif op == "sub":
                    b = b - v
                elif op == "mul":
                    w, b = w * v[:, None, None, None], b * v
                else:
                    w, b = w / v[:, None, None, None], b / v
                self.layers[t] = replace(layer, weight=w, bias=b)
                return
            # not per-channel: cannot live in the conv bias, keep it as a Normalize layer
        if isinstance(layer, Normalize):
            shape = self.out_shapes[t]
            mean, std = layer.mean, layer.std
        else:
            t = None  # nothing to merge into: append a new Normalize layer
            shape = self.ir_shape
            mean = torch.zeros(1, dtype=torch.float64)
            std = torch.ones(1, dtype=torch.float64)
        c = _torch(_compact(c_full.reshape(shape)))
        # (x - m) / s  <op>  c  ==  (x - m') / s'
        if op == "add":
            mean = mean - c * std
        elif op == "sub":
            mean = mean + c * std
        elif op == "mul":
            if bool((c == 0).any()):
                raise UnsupportedError(
                    f"Mul {label}: multiplying by a constant that contains zeros is only "
                    "supported right after a Dense/Gemm/MatMul or Conv layer"
                )
            std = std / c
        else:
            std = std * c
        new = Normalize(_torch(_compact(mean.numpy())), _torch(_compact(std.numpy())))
        if t is not None:
            self.layers[t] = new
        else:
            self.append(new, self.ir_shape)
