"""Result records of bound computations."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True, eq=False)
class IntermediateBounds:
    """Pre-activation bounds: ``pre[i] = (lower, upper)`` of the input of activation layer ``i``
    (each ``(N, *shape)``, N = rows of the ball)."""

    pre: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Bounds:
    """Lower/upper bounds of each spec row over each input set.

    ``lower``/``upper`` have shape ``(*batch_shape, S)``: ``(B, S)`` for one radius per input,
    ``(B, K, S)`` for K radii. ``intermediate`` holds the pre-activation bounds used (rows
    flattened to ``N = B * K``), which Jacobian bounds reuse. ``sides_skipped``: some stable
    neuron kept its interval bound on the side that did not settle it
    (:attr:`~nnbound.bounds.sides.SideOrder.SIGNS_FIRST`), so the bounds may be looser than
    the full ones.
    """

    lower: Tensor
    upper: Tensor
    method: str
    intermediate: IntermediateBounds
    sides_skipped: bool = False
