"""The bounded ReLU ``min(max(z, 0), cap)`` (ONNX ``Clip(0, cap)``, torch ``ReLU6`` /
``Hardtanh(0, cap)``, Keras ``relu(max_value=cap)``). Node attrs: ``alpha`` = the cap."""

import torch

from nnbound.ops.activation import activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.bounded_relu import BoundedReluRelaxation

BOUNDED_RELU = activation_op(
    "brelu",
    lambda cap: lambda x: torch.clamp(x, 0.0, cap),
    lambda cap, opt: BoundedReluRelaxation(cap, opt.relu_lower),
    Traits(piecewise_linear=True, kinks=(0.0,), monotone=True, lipschitz=1.0),
    Names(onnx=("Clip",), torch=("ReLU6", "relu6", "Hardtanh", "hardtanh"), keras=("brelu",)),
    default_alpha=1.0,
)

OPS = (BOUNDED_RELU,)
