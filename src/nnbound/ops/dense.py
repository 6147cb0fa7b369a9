"""Dense (fully connected) layers: ``y = W x + b`` on a flat input.

ONNX ``Gemm`` / ``MatMul`` with a constant operand and torch ``Linear`` map here (the
importers fold transposes and scalings into ``W``). Node: params ``weight (out, in)``,
``bias (out,)``.
"""

from nnbound.network.layers import Dense
from nnbound.ops.layer_backed import layer_op

DENSE = layer_op(
    "dense",
    Dense,
    onnx=("Gemm", "MatMul"),
    torch=("Linear", "linear", "addmm"),
    keras=("Dense",),
)

OPS = (DENSE,)
