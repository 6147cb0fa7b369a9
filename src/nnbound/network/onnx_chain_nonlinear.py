"""ONNX -> chain handlers for activations: ``LeakyRelu``, ``Elu`` and ``Clip`` by their own
rules, every other registered activation (``Relu``, ``Sigmoid``, ``Tanh``, ``Atan``,
``Softplus``, ...) through its operator in :mod:`nnbound.ops`.
"""

from __future__ import annotations

import onnx

from nnbound.errors import UnsupportedError
from nnbound.network.layers import Activation
from nnbound.network.onnx_attrs import _attr_float, _attrs
from nnbound.network.onnx_chain_builder import _Builder
from nnbound.network.onnx_chain_state import _ImporterState
from nnbound.ops.activation import ActivationOp
from nnbound.ops.registry import by_onnx


def _registry_activations(op_type: str) -> list[ActivationOp]:
    """The registered activations ONNX writes as ``op_type`` (:mod:`nnbound.ops`): every
    activation besides those with a handler here (``LeakyRelu``, ``Elu``, ``Clip``) is read
    through its operator."""
    return [op for op in by_onnx(op_type) if isinstance(op, ActivationOp)]


class _NonlinearOps(_ImporterState):
    """Activation handlers; every handler takes ``(builder, node, position of the network
    input, label)``."""

    def _activation(self, b: _Builder, name: str, alpha: float = 0.0) -> None:
        b.append(Activation(name, alpha), b.ir_shape)

    def _registry_activation(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        """``Relu``, ``Sigmoid``, ``Tanh``, ``Atan``, ``Softplus`` and any other registered
        activation: its parameter and settings read from the node's attributes."""
        op = _registry_activations(node.op_type)[0]
        where = f"ONNX {node.op_type} {label}"
        alpha = op.read_settings(op.onnx_settings, _attrs(node), where)
        if op.has_alpha and op.onnx_settings.alpha is not None:
            alpha = _attr_float(_attrs(node), op.onnx_settings.alpha, alpha)
            if op.zero_alpha_is_default and alpha == 0.0:  # the chain IR reads 0 as the default
                raise UnsupportedError(f"{where} with {op.onnx_settings.alpha}=0")
        self._activation(b, op.name, alpha)

    def _op_LeakyRelu(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        alpha = _attr_float(_attrs(node), "alpha", 0.01)
        self._activation(b, "relu" if alpha == 0.0 else "leaky_relu", alpha)

    def _op_Elu(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        alpha = _attr_float(_attrs(node), "alpha", 1.0)
        # ELU with alpha 0 is exactly ReLU (and the IR reads alpha 0 as the default 1)
        self._activation(b, "relu" if alpha == 0.0 else "elu", alpha)

    def _op_Clip(self, b: _Builder, node: onnx.NodeProto, pos: int, label: str) -> None:
        attrs = _attrs(node)
        lo: float | None = attrs.get("min")
        hi: float | None = attrs.get("max")
        # opset >= 11 passes min/max as optional inputs instead of attributes
        if len(node.input) > 1 and node.input[1]:
            lo = float(self._float_const(node.input[1], label, "Clip").reshape(-1)[0])
        if len(node.input) > 2 and node.input[2]:
            hi = float(self._float_const(node.input[2], label, "Clip").reshape(-1)[0])
        if lo == 0.0 and (hi is None or hi >= 3.4e38):
            self._activation(b, "relu")
            return
        if lo == 0.0 and hi is not None and 0.0 < hi < 3.4e38:
            self._activation(b, "brelu", float(hi))  # the bounded ReLU min(max(x, 0), hi)
            return
        raise UnsupportedError(
            f"unsupported ONNX op 'Clip' ({label}) with min={lo}, max={hi}: only Clip(min=0) "
            "(= ReLU) and Clip(min=0, max=c > 0) (= bounded ReLU) are supported"
        )
