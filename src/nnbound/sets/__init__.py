"""Input sets (Lp balls) and output specifications (margin matrices)."""

from nnbound.sets.lp_ball import LpBall
from nnbound.sets.norms import dual_norm, lp_norm, parse_norm
from nnbound.sets.spec import all_margins_spec, margin_spec, other_classes

__all__ = [
    "LpBall",
    "all_margins_spec",
    "dual_norm",
    "lp_norm",
    "margin_spec",
    "other_classes",
    "parse_norm",
]
