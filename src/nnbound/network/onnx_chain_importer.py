"""The walk of the ONNX chain importer: :class:`_Importer` checks that every node reads the
previous node's output plus constants, and hands each node to its handler (``_op_<op_type>``
in one of the operator mixins). :data:`SUPPORTED_OPS` lists the operators it understands.
"""

from __future__ import annotations

import math

from nnbound.errors import ModelFormatError, UnsupportedError
from nnbound.network.layers import Flatten, Shape
from nnbound.network.onnx_attrs import _node_label
from nnbound.network.onnx_chain_builder import _Builder
from nnbound.network.onnx_chain_layout import _LayoutOps
from nnbound.network.onnx_chain_math import _MathOps
from nnbound.network.onnx_chain_nonlinear import _NonlinearOps, _registry_activations
from nnbound.network.onnx_chain_spatial import _SpatialOps

SUPPORTED_OPS: tuple[str, ...] = (
    "Add",
    "Atan",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Elu",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softplus",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
)
"""ONNX operators the importer understands (``Clip`` only as ``Clip(min=0)`` = ReLU or
``Clip(min=0, max=c)`` = bounded ReLU,
``Dropout`` only in inference mode, ``Transpose`` only where it keeps the data order)."""


class _Importer(_NonlinearOps, _LayoutOps, _MathOps, _SpatialOps):
    """Walks the chain: the node handlers come from the operator mixins, the constants and the
    graph's input and output from :class:`_ImporterState`."""

    def run(self, input_shape: Shape) -> _Builder:
        """Walk the chain; the IR starts from ``input_shape`` (same size as the graph input)."""
        full, _ = self.input_shapes()
        b = _Builder(full, input_shape)
        current = self.input.name
        seen: set[str] = {current}  # every network value produced so far
        graph = self.model.graph
        for index, node in enumerate(graph.node):
            label = _node_label(node, index)
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedError(f"unsupported ONNX op '{node.domain}.{op}' ({label})")
            if op not in SUPPORTED_OPS and not _registry_activations(op):
                raise UnsupportedError(f"unsupported ONNX op {op!r} ({label})")
            if not node.output:
                raise ModelFormatError(f"{self.where}: ONNX {op} {label} has no output")
            chain_pos: list[int] = []
            for pos, name in enumerate(node.input):
                if not name:
                    continue  # an omitted optional input
                if name == current:
                    chain_pos.append(pos)
                elif name in self.consts:
                    continue
                elif name in seen:
                    raise UnsupportedError(
                        f"{self.where}: ONNX graph is not a chain: {op} {label} reads {name!r}, "
                        f"which is not the output of the previous network node ({current!r})"
                    )
                else:
                    raise ModelFormatError(
                        f"{self.where}: ONNX {op} {label} reads undefined tensor {name!r} "
                        "(truncated, unsorted or invalid graph)"
                    )
            if not chain_pos:
                if op == "Constant":
                    self._add_const(node.output[0], self._constant_node(node, label))
                elif op == "Identity":
                    self._add_const(node.output[0], self.consts[node.input[0]])
                else:
                    raise UnsupportedError(
                        f"unsupported ONNX op {op!r} ({label}) on constants only: constant "
                        "subgraphs other than Constant/Identity are not supported"
                    )
                continue
            if len(chain_pos) > 1:
                raise UnsupportedError(
                    f"{self.where}: {op} {label} reads the network value {current!r} twice "
                    "(not an affine function of it)"
                )
            handler = getattr(self, f"_op_{op}", self._registry_activation)
            handler(b, node, chain_pos[0], label)
            current = node.output[0]
            seen.add(current)
        if current != self.output_name:
            if self.output_name in seen:
                raise UnsupportedError(
                    f"{self.where}: ONNX graph output {self.output_name!r} is not the end of "
                    f"the node chain (which ends in {current!r}); only sequential graphs are "
                    "supported"
                )
            raise ModelFormatError(
                f"{self.where}: ONNX graph output {self.output_name!r} is not produced by any "
                "node (truncated or invalid graph)"
            )
        # the IR output is flat logits, whatever extra size-1 axes the ONNX output has
        if not b.layers or len(b.ir_shape) != 1:
            b.append(Flatten(), (math.prod(b.ir_shape),))
        return b
