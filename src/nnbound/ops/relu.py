"""ReLU and leaky ReLU: ``max(z, alpha z)`` with ``0 <= alpha <= 1`` (Fast-Lin's parallel
lines, CROWN's adaptive lower line; the lower slope is the method's choice)."""

import torch
import torch.nn.functional as F

from nnbound.ops.activation import activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.relu import LeakyReluRelaxation

RELU = activation_op(
    "relu",
    lambda alpha: torch.relu,
    lambda alpha, opt: LeakyReluRelaxation(0.0, opt.relu_lower),
    Traits(piecewise_linear=True, kinks=(0.0,), monotone=True, lipschitz=1.0),
    Names(onnx=("Relu",), torch=("ReLU", "relu", "relu_"), keras=("ReLU", "relu")),
)
LEAKY_RELU = activation_op(
    "leaky_relu",
    lambda alpha: lambda x: F.leaky_relu(x, alpha),
    lambda alpha, opt: LeakyReluRelaxation(alpha, opt.relu_lower),
    Traits(piecewise_linear=True, kinks=(0.0,), monotone=True, lipschitz=1.0),
    Names(
        onnx=("LeakyRelu",),
        torch=("LeakyReLU", "leaky_relu", "leaky_relu_"),
        keras=("LeakyReLU", "leaky_relu"),
    ),
    default_alpha=0.01,
)

OPS = (RELU, LEAKY_RELU)
