"""Result records of Jacobian and Lipschitz bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from nnbound.bounds.result import Bounds


@dataclass(frozen=True, eq=False)
class JacobianBounds:
    """Element-wise bounds ``lower <= d(C f)/dx <= upper`` valid at every point of an input set.

    Attributes:
        lower, upper: ``(*batch_shape, S, *input_shape)`` (``batch_shape`` of the ball: ``(B,)``
            or ``(B, K)``; S spec rows).
        method: ``recurjac`` or ``fastlip``.
        layer_method: the layer-wise method that gave the pre-activation bounds.
        direction: -1 backward, +1 forward (RecurJac only).
        shift: forward recursion started at the first hidden layer (RecurJac forward only).
        layer_bounds: the layer-wise bounds of ``C f(x)`` over the set (their ``intermediate``
            holds the pre-activation bounds the derivative intervals came from).
        global_bound: ``batch_shape`` bool: every derivative interval is the activation's whole
            derivative range (all ReLUs unstable), so the bounds hold on all of input space.
    """

    lower: Tensor
    upper: Tensor
    method: str
    layer_method: str
    direction: int
    shift: int
    layer_bounds: Bounds
    global_bound: Tensor
    _state: Any = field(default=None, repr=False)

    @property
    def unsure(self) -> Tensor:
        """``(*batch_shape, S)``: entries whose sign is not certain (lower < 0 < upper)."""
        lead = self.lower.dim() - self._input_dims
        lo = self.lower.reshape(*self.lower.shape[:lead], -1)
        up = self.upper.reshape(*self.upper.shape[:lead], -1)
        return ((lo < 0) & (up > 0)).sum(-1)

    @property
    def _input_dims(self) -> int:
        return int(self._state.input_dims) if self._state is not None else 1

    def contains(self, jac: Tensor, tol: float = 0.0) -> Tensor:
        """Whether Jacobians ``jac`` (shaped like ``lower``, or with one more axis after the
        batch axes for several points each) lie within the bounds (up to ``tol``)."""
        lo, up = self.lower, self.upper
        if jac.dim() == lo.dim() + 1:
            nb = lo.dim() - self._input_dims - 1
            lo, up = lo.unsqueeze(nb), up.unsqueeze(nb)
        return (jac >= lo - tol) & (jac <= up + tol)


@dataclass(frozen=True, eq=False)
class LipschitzBounds:
    """Local Lipschitz constants of each spec row over each input set.

    Attributes:
        value: ``(*batch_shape, S)``: ``|c_s.f(x) - c_s.f(y)| <= value * ||x - y||_p`` for x, y in
            the set (the dual norm ``q`` of the Jacobian row, maximised over its bounds).
        p: the input norm.
        jacobian: the Jacobian bounds it was computed from.
    """

    value: Tensor
    p: float
    jacobian: JacobianBounds

    @property
    def global_bound(self) -> Tensor:
        return self.jacobian.global_bound
