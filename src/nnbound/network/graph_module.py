"""A :class:`Graph` as a ``torch.nn.Module`` (for code that takes any differentiable module:
CLEVER, the attacks, torch tooling).

The node parameters become buffers, so ``.to(device, dtype)`` and ``copy.deepcopy`` move
them like any module's tensors; ``forward`` evaluates the nodes with the buffers' current
values.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from nnbound.network.graph import Graph
from nnbound.ops.registry import get_op


class GraphModule(nn.Module):
    """``graph`` as a module: ``forward(x)`` with ``x`` of shape ``(B, *graph.input_shape)``."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.input_shape = graph.input_shape
        self.input_range = graph.input_range
        self.name = graph.name
        for i, node in enumerate(graph.nodes):
            for key, t in node.params.items():
                self.register_buffer(f"p{i}_{key}", t.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        values = {self.graph.input_name: x}
        for i, node in enumerate(self.graph.nodes):
            params = {k: getattr(self, f"p{i}_{k}") for k in node.params}
            live = replace(node, params=params) if params else node
            values[node.output] = get_op(node.op, node).forward(
                live, *(values[name] for name in node.inputs)
            )
        return values[self.graph.output]


__all__ = ["GraphModule"]
