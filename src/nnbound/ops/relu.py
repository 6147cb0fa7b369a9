"""ReLU and leaky ReLU: ``max(z, alpha z)`` with ``0 <= alpha <= 1`` (Fast-Lin's parallel
lines, CROWN's adaptive lower line; the lower slope is the method's choice).

A leaky slope outside ``[0, 1]`` can be held and evaluated, but has no relaxation (the
function is no longer convex): bound methods refuse it."""

import torch
import torch.nn.functional as F

from nnbound.ops.activation import Spelling, activation_op
from nnbound.ops.base import Names, Traits
from nnbound.relax.relu import LeakyReluRelaxation

RELU = activation_op(
    "relu",
    lambda alpha: torch.relu,
    lambda alpha, opt: LeakyReluRelaxation(0.0, opt.relu_lower),
    Traits(piecewise_linear=True, kinks=(0.0,), monotone=True, lipschitz=1.0),
    Names(onnx=("Relu",), torch=("ReLU", "relu", "relu_"), keras=("ReLU", "relu")),
    derivative_range=lambda alpha: (0.0, 1.0),
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
    alpha_label="alpha",
    # slopes 1 and alpha: the larger of the two magnitudes
    lipschitz_of=lambda alpha: max(1.0, abs(alpha)),
    derivative_range=lambda alpha: (min(alpha, 1.0), max(alpha, 1.0)),
    onnx_settings=Spelling(alpha="alpha", alpha_default=0.01),
    torch_settings=Spelling(alpha="negative_slope", alpha_default=0.01),
    # Keras's LeakyReLU layer defaults to 0.3 and its leaky_relu function to 0.2: a bare
    # name is refused rather than guessed
    keras_settings=Spelling(alpha="alpha"),
)

OPS = (RELU, LEAKY_RELU)
