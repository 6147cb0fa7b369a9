"""Linear relaxations of activations: one small object per activation family."""

from nnbound.relax.base import LinearRelaxation, Relaxation
from nnbound.relax.bounded_relu import BoundedReluRelaxation
from nnbound.relax.convex import ConvexRelaxation
from nnbound.relax.registry import relaxation_for
from nnbound.relax.relu import LeakyReluRelaxation, LowerSlope, ReluRelaxation
from nnbound.relax.s_shaped import SShapedRelaxation, TangentRule

__all__ = [
    "BoundedReluRelaxation",
    "ConvexRelaxation",
    "LeakyReluRelaxation",
    "LinearRelaxation",
    "LowerSlope",
    "Relaxation",
    "ReluRelaxation",
    "SShapedRelaxation",
    "TangentRule",
    "relaxation_for",
]
