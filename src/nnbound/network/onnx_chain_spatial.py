"""ONNX -> chain handlers for 2-D spatial nodes: ``Conv``, ``AveragePool`` / ``MaxPool`` and
the global pools, with their attributes checked against what the IR's ``Conv2d`` /
``AvgPool2d`` / ``MaxPool2d`` layers hold (symmetric padding, batch size 1).
"""

from __future__ import annotations

import numpy as np
import onnx

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.layers import AvgPool2d, Conv2d, MaxPool2d, Shape
from nnbound.network.onnx_attrs import _attrs, _resolve_pads
from nnbound.network.onnx_chain_builder import _Builder, _torch
from nnbound.network.onnx_chain_state import _ImporterState


class _SpatialOps(_ImporterState):
    """Convolution and pooling handlers; every handler takes ``(builder, node, position of the
    network input, label)``."""

    def _pool_input(self, b: _Builder, node: onnx.NodeProto, label: str) -> Shape:
        """The (1, C, H, W) ONNX shape a 2-D pool reads; refuses anything else."""
        op = node.op_type
        s = b.shape
        if len(s) != 4:
            raise UnsupportedError(
                f"unsupported ONNX op {op!r} ({label}): only 2-D pooling of (N, C, H, W) "
                f"tensors is supported (input shape {s})"
            )
        if s[0] != 1:
            raise UnsupportedError(f"{op} {label}: input of shape {s} has batch size {s[0]}")
        if op == "MaxPool" and len([o for o in node.output if o]) > 1:
            raise UnsupportedError(
                f"unsupported ONNX op 'MaxPool' ({label}) with its Indices output: only the "
                "pooled values are supported"
            )
        return s

    def _pool_layer(self, b: _Builder, node: onnx.NodeProto, label: str) -> AvgPool2d | MaxPool2d:
        """The IR layer of an ``AveragePool`` / ``MaxPool`` node (attributes checked)."""
        op = node.op_type
        attrs = _attrs(node)
        s = self._pool_input(b, node, label)

        def bad(attr: str, why: str) -> UnsupportedError:
            return UnsupportedError(
                f"unsupported ONNX op {op!r} ({label}): attribute {attr}={attrs.get(attr)!r} {why}"
            )

        if "kernel_shape" not in attrs:
            raise ModelFormatError(f"{op} {label}: missing attribute kernel_shape")
        kernel = tuple(int(v) for v in attrs["kernel_shape"])
        if len(kernel) != 2 or min(kernel) < 1:
            raise bad("kernel_shape", "(only 2-D kernels of positive size are supported)")
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        if len(strides) != 2 or min(strides) < 1:
            raise bad("strides", "(expected two positive integers)")
        dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        if len(dilations) != 2 or min(dilations) < 1:
            raise bad("dilations", "(expected two positive integers)")
        if op == "AveragePool" and dilations != (1, 1):
            raise bad("dilations", "(dilated average pooling is not supported)")
        ceil_mode = int(attrs.get("ceil_mode", 0))
        if ceil_mode not in (0, 1):
            raise bad("ceil_mode", "(expected 0 or 1)")
        if op == "MaxPool" and int(attrs.get("storage_order", 0)) != 0:
            raise bad("storage_order", "(only the default row-major order is supported)")
        auto_pad, pads = _resolve_pads(attrs, op, label, s[2:], kernel, strides, dilations)
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
            what = "auto_pad" if auto_pad in ("SAME_UPPER", "SAME_LOWER") else "pads"
            raise bad(
                what,
                f"gives padding {pads} ([top, left, bottom, right]); only symmetric padding is "
                "supported",
            )
        try:
            if op == "AveragePool":
                cip = int(attrs.get("count_include_pad", 0))
                if cip not in (0, 1):
                    raise bad("count_include_pad", "(expected 0 or 1)")
                return AvgPool2d(kernel, strides, (pads[0], pads[1]), bool(ceil_mode), bool(cip))
            return MaxPool2d(kernel, strides, (pads[0], pads[1]), dilations, bool(ceil_mode))
        except InputError as exc:
            raise bad("pads", f"is not supported: {exc}") from None

    def _append_pool(self, b: _Builder, layer: AvgPool2d | MaxPool2d, op: str, label: str) -> None:
        b.materialize(b.shape[1:])
        try:
            out = layer.out_shape(b.ir_shape)
        except InputError as exc:
            raise ModelFormatError(f"{op} {label}: {exc}") from None
        b.append(layer, out)
        b.shape = (1, *out)

    def _op_AveragePool(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        self._append_pool(b, self._pool_layer(b, node, label), node.op_type, label)

    _op_MaxPool = _op_AveragePool

    def _op_GlobalAveragePool(
        self, b: _Builder, node: onnx.NodeProto, pos: int, label: str
    ) -> None:
        s = self._pool_input(b, node, label)
        kernel = (int(s[2]), int(s[3]))
        global_avg = node.op_type == "GlobalAveragePool"
        layer = AvgPool2d(kernel) if global_avg else MaxPool2d(kernel)
        self._append_pool(b, layer, node.op_type, label)

    _op_GlobalMaxPool = _op_GlobalAveragePool

    def _op_Conv(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise UnsupportedError(f"unsupported ONNX op 'Conv' ({label}) with a network weight")
        w = self._float_const(node.input[1], label, "Conv")
        s = b.shape
        if w.ndim != 4 or len(s) != 4:
            raise UnsupportedError(
                f"unsupported ONNX op 'Conv' ({label}): only 2-D convolutions are supported "
                f"(input shape {s}, weight shape {w.shape})"
            )
        if s[0] != 1:
            raise UnsupportedError(f"Conv {label}: input of shape {s} has batch size {s[0]}")
        group = int(attrs.get("group", 1))
        if s[1] != w.shape[1] * group:
            raise ModelFormatError(
                f"Conv {label}: input has {s[1]} channels, weight {w.shape} with group {group}"
            )
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(w.shape[2:]):
            raise ModelFormatError(
                f"Conv {label}: kernel_shape {attrs['kernel_shape']} does not match weight "
                f"{w.shape}"
            )
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        _, pads = _resolve_pads(attrs, "Conv", label, s[2:], w.shape[2:], strides, dilations)
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or min(pads) < 0:
            raise UnsupportedError(
                f"unsupported ONNX op 'Conv' ({label}) with asymmetric padding {pads} "
                "([top, left, bottom, right]); only symmetric padding is supported"
            )
        if len(node.input) > 2 and node.input[2]:
            bias = self._float_const(node.input[2], label, "Conv").reshape(-1)
        else:
            bias = np.zeros(w.shape[0])
        b.materialize(s[1:])
        layer = Conv2d(_torch(w), _torch(bias), strides, (pads[0], pads[1]), dilations, group)
        try:
            out = layer.out_shape(b.ir_shape)
        except InputError as exc:
            raise ModelFormatError(f"Conv {label}: {exc}") from None
        b.append(layer, out)
        b.shape = (1, *out)
