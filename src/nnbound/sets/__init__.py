"""Input sets (Lp balls, boxes) and output specifications (margin matrices)."""

from nnbound.sets.box import Box
from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm, lp_norm, parse_norm
from nnbound.sets.spec import all_margins_spec, margin_spec, other_classes

__all__ = [
    "Box",
    "LpBall",
    "all_margins_spec",
    "dual_norm",
    "lp_norm",
    "margin_spec",
    "other_classes",
    "parse_norm",
]
