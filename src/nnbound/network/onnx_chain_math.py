"""ONNX -> chain handlers for affine nodes with constants: ``MatMul`` / ``Gemm`` (a ``Dense``
layer, Kronecker-structured when several rows are multiplied), ``Add`` / ``Sub`` / ``Mul`` /
``Div`` and ``BatchNormalization`` (folded by the builder into the layer before, or a
``Normalize`` layer).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from nnbound.errors import InputError, ModelFormatError, UnsupportedError
from nnbound.network.layers import Shape
from nnbound.network.onnx_attrs import _attr_float, _attrs
from nnbound.network.onnx_chain_builder import _Builder
from nnbound.network.onnx_chain_state import _ImporterState

# A folded MatMul on a non-vector tensor becomes a Kronecker-structured Dense; refuse ones that
# would not fit comfortably in memory rather than allocate gigabytes.
_MAX_DENSE_ELEMENTS = 1 << 27


class _MathOps(_ImporterState):
    """Matrix product and element-wise affine handlers; every handler takes ``(builder, node,
    position of the network input, label)``."""

    def _matmul_right(self, b: _Builder, w: np.ndarray, label: str, op: str) -> None:
        """``x @ W`` (W is ``(n, m)`` or ``(n,)``) on the network value ``x`` of shape
        ``(*L, n)``: a Dense ``kron(I_L, W^T)`` (just ``W^T`` when L is empty or all ones)."""
        s = b.shape
        if not s or w.ndim not in (1, 2) or s[-1] != w.shape[0]:
            raise (UnsupportedError if w.ndim > 2 else ModelFormatError)(
                f"{op} {label}: cannot multiply a network value of shape {s} by a constant of "
                f"shape {w.shape} on the right"
            )
        lead = s[:-1]
        wt = w.T if w.ndim == 2 else w[None, :]
        out = (*lead, w.shape[1]) if w.ndim == 2 else lead
        b.dense(self._kron(math.prod(lead), wt, 1, label, op), out)

    def _matmul_left(self, b: _Builder, w: np.ndarray, label: str, op: str) -> None:
        """``W @ x`` (W is ``(m, n)`` or ``(n,)``) on the network value ``x`` of shape ``(n,)``
        or ``(*L, n, k)``: a Dense ``kron(I_L, kron(W, I_k))``."""
        s = b.shape
        ok = w.ndim in (1, 2) and len(s) >= 1
        if ok:
            n = s[0] if len(s) == 1 else s[-2]
            ok = n == w.shape[-1]
        if not ok:
            raise (UnsupportedError if w.ndim > 2 else ModelFormatError)(
                f"{op} {label}: cannot multiply a network value of shape {s} by a constant of "
                f"shape {w.shape} on the left"
            )
        w2 = w if w.ndim == 2 else w[None, :]
        if len(s) == 1:
            out: Shape = (w.shape[0],) if w.ndim == 2 else ()
            b.dense(w2, out)
            return
        lead, k = s[:-2], s[-1]
        out = (*lead, w.shape[0], k) if w.ndim == 2 else (*lead, k)
        b.dense(self._kron(math.prod(lead), w2, k, label, op), out)

    def _kron(self, n_lead: int, w: np.ndarray, k: int, label: str, op: str) -> np.ndarray:
        if n_lead == 1 and k == 1:
            return w
        size = (n_lead * k) ** 2 * w.size
        if size > _MAX_DENSE_ELEMENTS:
            raise UnsupportedError(
                f"{op} {label}: a matrix product over {n_lead * k} rows would need a "
                f"{size}-element dense matrix"
            )
        m = np.kron(w, np.eye(k)) if k > 1 else w
        return np.kron(np.eye(n_lead), m) if n_lead > 1 else m

    def _op_MatMul(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        w = self._float_const(self._others(node, pos)[0], label, "MatMul")
        if pos == 0:
            self._matmul_right(b, w, label, "MatMul")  # x @ W (ACAS Xu, W is [in, out])
        else:
            self._matmul_left(b, w, label, "MatMul")  # W @ x (VNN-COMP toy nets)

    def _op_Gemm(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise UnsupportedError(
                f"unsupported ONNX op 'Gemm' ({label}) with the network value as input B"
            )
        if int(attrs.get("transA", 0)):
            raise UnsupportedError(f"unsupported ONNX op 'Gemm' ({label}) with transA=1")
        if len(b.shape) != 2:
            raise ModelFormatError(f"Gemm {label}: input A must be 2-D, got shape {b.shape}")
        if len(node.input) < 2 or not node.input[1]:
            raise ModelFormatError(f"Gemm {label}: missing input B")
        w = self._float_const(node.input[1], label, "Gemm")
        if w.ndim != 2:
            raise ModelFormatError(f"Gemm {label}: B must be 2-D, got shape {w.shape}")
        if int(attrs.get("transB", 0)):
            w = w.T
        self._matmul_right(b, _attr_float(attrs, "alpha", 1.0) * w, label, "Gemm")
        if len(node.input) > 2 and node.input[2]:
            c = _attr_float(attrs, "beta", 1.0) * self._float_const(node.input[2], label, "Gemm")
            self._apply(b, "add", c, label, "Gemm")

    def _apply(self, b: _Builder, op: str, c: np.ndarray, label: str, onnx_op: str) -> None:
        """``x <op> c`` on the network value, with ONNX (numpy) broadcasting of ``c``."""
        try:
            shape = np.broadcast_shapes(c.shape, b.shape)
        except ValueError:
            raise ModelFormatError(
                f"{onnx_op} {label}: constant of shape {c.shape} does not broadcast to the "
                f"network value of shape {b.shape}"
            ) from None
        if math.prod(shape) != math.prod(b.shape):
            raise UnsupportedError(
                f"unsupported ONNX op {onnx_op!r} ({label}): its constant of shape {c.shape} "
                f"broadcasts the network value of shape {b.shape} to {shape}"
            )
        b.shape = tuple(int(d) for d in shape)  # possibly with extra leading size-1 axes
        if op == "div" and bool((c == 0).any()):
            raise InputError(f"{onnx_op} {label}: division by a constant that contains zeros")
        neutral = 0.0 if op in ("add", "sub") else 1.0
        if bool((c == neutral).all()):
            return  # e.g. ACAS Xu's subtraction of an all-zero "AvgImg"
        b.elementwise(op, np.broadcast_to(c, b.shape).astype(np.float64), label)

    def _arith(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        op = node.op_type
        others = self._others(node, pos)
        if len(others) != 1 or not others[0]:
            raise ModelFormatError(f"{op} {label}: expected two inputs")
        c = self._float_const(others[0], label, op)
        if op == "Sub" and pos == 1:
            # c - x  ==  (-1 * x) + c
            self._apply(b, "mul", np.array(-1.0), label, op)
            self._apply(b, "add", c, label, op)
        elif op == "Div" and pos == 1:
            raise UnsupportedError(
                f"unsupported ONNX op 'Div' ({label}) dividing by the network value (not affine)"
            )
        else:
            self._apply(b, op.lower(), c, label, op)

    _op_Add = _op_Sub = _op_Mul = _op_Div = _arith

    def _op_BatchNormalization(
        self, b: _Builder, node: onnx.NodeProto, pos: int, label: str
    ) -> None:
        attrs = _attrs(node)
        if pos != 0:
            raise ModelFormatError(f"BatchNormalization {label}: network value is not input X")
        if int(attrs.get("training_mode", 0)) or int(attrs.get("spatial", 1)) == 0:
            raise UnsupportedError(
                f"unsupported ONNX op 'BatchNormalization' ({label}) in training or non-spatial "
                "mode"
            )
        if len(node.input) < 5 or not all(node.input[1:5]):
            raise ModelFormatError(f"BatchNormalization {label}: expected 5 inputs")
        scale, bias, mean, var = (
            self._float_const(n, label, "BatchNormalization") for n in node.input[1:5]
        )
        if len(b.shape) < 2:
            raise ModelFormatError(
                f"BatchNormalization {label}: input of shape {b.shape} has no channel axis"
            )
        # per-channel constants on axis 1 of the (batch-1) ONNX shape
        cshape = (1, b.shape[1]) + (1,) * (len(b.shape) - 2)
        eps = _attr_float(attrs, "epsilon", 1e-5)
        denom = np.sqrt(var.reshape(-1) + eps)
        # applied step by step, exactly as the ONNX definition reads, so each step folds alone
        for op, c in (("sub", mean), ("div", denom), ("mul", scale), ("add", bias)):
            self._apply(b, op, c.reshape(cshape), label, "BatchNormalization")
