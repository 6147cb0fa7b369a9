"""nnbound: how robust is a trained network? Certified lower bounds (IBP, Fast-Lin, CROWN,
CROWN-general, spectral), with the network IR, importers, data and training they need.

The public API is what ``__all__`` lists; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from nnbound.bounds import ALL_METHODS, Bounds, bounds
from nnbound.clever import Clever, clever
from nnbound.errors import InputError, ModelFormatError, NnboundError, UnsupportedError
from nnbound.jacobian import jacobian_bounds, local_lipschitz
from nnbound.network import (
    Activation,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    MaxPool2d,
    Network,
    Normalize,
    Reshape,
    load_network,
    save_network,
    to_torch,
)
from nnbound.relax import LowerSlope, TangentRule, relaxation_for
from nnbound.sets import LpBall, all_margins_spec, margin_spec
from nnbound.tasks.radius import certified_radius

__all__ = [
    "ALL_METHODS",
    "Activation",
    "AvgPool2d",
    "Bounds",
    "Clever",
    "Conv2d",
    "Dense",
    "Flatten",
    "InputError",
    "LowerSlope",
    "LpBall",
    "MaxPool2d",
    "ModelFormatError",
    "Network",
    "NnboundError",
    "Normalize",
    "Reshape",
    "TangentRule",
    "UnsupportedError",
    "__version__",
    "all_margins_spec",
    "bounds",
    "certified_radius",
    "clever",
    "jacobian_bounds",
    "load_network",
    "local_lipschitz",
    "margin_spec",
    "relaxation_for",
    "save_network",
    "to_torch",
]
