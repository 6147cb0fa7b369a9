"""The perturbation samplers of CLEVER (clever_spec §3), drawn on the device in batches.

Two sampling modes:

``"reference"`` (the default, the reference code's ``randsphere.py``)
    ``x = clip(x0 + s * u, lo, hi)`` with a random scale ``s`` drawn independently per sample
    and a base sample ``u`` of the chosen ``sample_norm``; **one** such ball is used for all
    three scores (``||grad||_inf``, ``||grad||_2`` and ``||grad||_1`` come from the same
    gradients):

    ============  ===================================  =========================
    sample norm   base sampler ``u``                   scale ``s`` (data width 1)
    ============  ===================================  =========================
    2 (default)   uniform in the unit L2 ball          ``U[0, 3]``
    1             uniform on the unit L1 *sphere*      ``U[0, 30]``
    inf           uniform in the unit Linf ball        ``0.1`` (fixed)
    ============  ===================================  =========================

    The reference hard-codes these radii for pixels in ``[-0.5, 0.5]`` (width 1); here they
    are multiplied by the width ``hi - lo`` of the model's input range, so a model on
    ``[0, 255]`` samples the same fraction of its box. With ``||u||_2 ~= 1`` in high dimension
    the L2 mode gives ``||delta||_2 ~ U[0, 3]``: a "radius-uniform" mixture, *not* uniform in the
    radius-3 ball (which would put almost all mass at radius 3).

``"ball"`` (the paper's Algorithm 1 and IBM ART's ``random_sphere``)
    ``x = clip(x0 + R * u, lo, hi)`` with ``u`` uniform in the unit ball of the **score's own
    norm** ``p``: each score gets its own samples (three times the gradient work for three
    norms). Unlike the reference's L1 sampler (a sphere), the L1 ball here is the full ball.

Clipping to the data box moves mass onto the box faces: the distribution is "ball, then
projected on the box", not uniform on ``ball ∩ box``, in both modes (as both references).

Differences from the reference that do not change the distributions (documented, deliberate):

* L1: the reference takes spacings of ``n - 1`` sorted uniforms (a Dirichlet(1, ..., 1) point)
  and random signs; here the Dirichlet point is ``E / sum(E)`` with ``E`` i.i.d. exponential,
  the same distribution in ``O(n)`` instead of an ``O(n log n)`` sort on the device.
* random signs are fair (the reference's byte trick gives ``P(+1) = 127/255``).
* everything is drawn with a seeded ``torch.Generator`` on the model's device; the reference
  used numpy in worker processes and was not bit-reproducible (spec §10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nnbound.errors import InputError
from nnbound.sets.norms import norm_name, parse_norm

SAMPLING_MODES: tuple[str, ...] = ("reference", "ball")
NORM_KEYS: tuple[str, ...] = ("1", "2", "inf")
"""Score norms ``p`` in the order used by every array of this package."""

REFERENCE_SCALE: dict[str, tuple[float, float]] = {
    "2": (0.0, 3.0),
    "1": (0.0, 30.0),
    "inf": (0.1, 0.1),
}
"""``s ~ U[a, b]`` of the reference's samplers for a data range of width 1 (spec §3)."""

REFERENCE_RADIUS: dict[str, float] = {k: v[1] for k, v in REFERENCE_SCALE.items()}
"""Default radius ``R`` per norm (width-1 data): the largest scale the reference samples at.
Used as the ``"ball"`` radius and as the cap ``min(score, R)`` when that is asked for."""


def _check_count(count: int, dim: int) -> None:
    if count < 0 or dim < 1:
        raise InputError(f"need count >= 0 and dim >= 1, got {count} and {dim}")


def unit_l2_ball(
    count: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    normals: torch.dtype = torch.float64,
) -> Tensor:
    """``(count, dim)`` points uniform in the unit L2 ball (the reference's exact sampler).

    ``z ~ N(0, I)``; ``||z||^2`` is chi-square with ``dim`` degrees of freedom, so
    ``P(dim/2, ||z||^2/2)`` (regularised lower incomplete gamma = its CDF) is ``U(0, 1)`` and
    ``radius = P^(1/dim)`` has the ``r^dim`` law of the ball. The gamma function is evaluated
    in float64: in float32 and large ``dim`` it loses the last digits of the radius.
    ``normals`` is the dtype ``z`` is drawn in (then used in float64): float32 for float32
    samples, whose digits it fills, is ~4x faster on a CPU (torch draws float64 normals one
    at a time, float32 ones vectorised).
    """
    _check_count(count, dim)
    z = torch.randn(count, dim, generator=generator, device=device, dtype=normals)
    z = z.to(torch.float64)
    s2 = (z * z).sum(1, keepdim=True)
    radius = torch.special.gammainc(torch.full_like(s2, dim / 2.0), s2 / 2.0) ** (1.0 / dim)
    return (z * (radius / s2.sqrt())).to(dtype)


def _dirichlet_ones(
    count: int, parts: int, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """``(count, parts)`` Dirichlet(1, ..., 1) points (uniform on the simplex), float64."""
    # Exponential(1) = -log(U) with U in (0, 1]; 1 - rand avoids log(0).
    e = -torch.log1p(
        -torch.rand(count, parts, generator=generator, device=device, dtype=torch.float64)
    )
    return e / e.sum(1, keepdim=True)


def _random_signs(
    shape: tuple[int, int], generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
    return bits.to(torch.float64) * 2.0 - 1.0


def unit_l1_sphere(
    count: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(count, dim)`` points uniform on the unit L1 sphere ``||u||_1 = 1`` (the reference's
    ``l1_samples``: a uniform point of the simplex with random signs)."""
    _check_count(count, dim)
    u = _dirichlet_ones(count, dim, generator, device)
    return (u * _random_signs((count, dim), generator, device)).to(dtype)


def unit_l1_ball(
    count: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(count, dim)`` points uniform in the unit L1 ball (ART's L1 ``random_sphere``).

    The first ``dim`` coordinates of a Dirichlet(1, ..., 1) point in ``dim + 1`` parts are
    uniform in ``{u >= 0, sum(u) <= 1}``; random signs spread it over the ``2^dim`` orthants.
    """
    _check_count(count, dim)
    u = _dirichlet_ones(count, dim + 1, generator, device)[:, :dim]
    return (u * _random_signs((count, dim), generator, device)).to(dtype)


def unit_linf_ball(
    count: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(count, dim)`` points uniform in ``[-1, 1]^dim``."""
    _check_count(count, dim)
    u = torch.rand(count, dim, generator=generator, device=device, dtype=torch.float64)
    return (u * 2.0 - 1.0).to(dtype)


_BALLS = {"2": unit_l2_ball, "1": unit_l1_ball, "inf": unit_linf_ball}
_REFERENCE_BASE = {"2": unit_l2_ball, "1": unit_l1_sphere, "inf": unit_linf_ball}


def norm_key(p: float | int | str) -> str:
    """``"1"``, ``"2"`` or ``"inf"`` for any spelling :func:`~nnbound.sets.norms.parse_norm`
    accepts (``1``, ``"l2"``, ``"i"``, ``math.inf``...)."""
    return norm_name(parse_norm(p))


def resolve_radii(radius: float | Mapping[str, float] | None, width: float) -> dict[str, float]:
    """The radius ``R`` per norm key: the reference's radii times the data width, overridden by
    ``radius`` (one float for every norm, or a mapping from norm spellings to floats)."""
    radii = {k: v * width for k, v in REFERENCE_RADIUS.items()}
    if radius is None:
        return radii
    items = (
        {norm_key(k): v for k, v in radius.items()}
        if isinstance(radius, Mapping)
        else dict.fromkeys(NORM_KEYS, radius)
    )
    for key, value in items.items():
        try:
            r = float(value)
        except (TypeError, ValueError):
            raise InputError(f"radius for L{key} must be a number, got {value!r}") from None
        if not (math.isfinite(r) and r > 0):
            raise InputError(f"radius for L{key} must be finite and > 0, got {value!r}")
        radii[key] = r
    return radii


@dataclass(frozen=True)
class Sampler:
    """Draws the perturbed inputs around ``x0``.

    Attributes:
        mode: ``"reference"`` or ``"ball"`` (see the module docstring).
        norm: the norm key of the ball: the sample norm in ``"reference"`` mode, the score's
            norm in ``"ball"`` mode.
        radius: the upper end of the scale ``s ~ U[a·R/b, R]`` in ``"reference"`` mode (the
            reference's ``[0, 3]``, ``[0, 30]``, ``0.1`` for width-1 data), the ball radius
            ``R`` in ``"ball"`` mode.
        box: ``(lo, hi)`` to clip every sample to, or None (no clipping).
    """

    mode: str
    norm: str
    radius: float
    box: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise InputError(
                f"unknown sampling mode {self.mode!r}; use {' or '.join(SAMPLING_MODES)}"
            )
        object.__setattr__(self, "norm", norm_key(self.norm))
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise InputError(f"sampling radius must be finite and > 0, got {self.radius}")

    def perturbations(
        self,
        count: int,
        dim: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``(count, dim)`` perturbations ``delta`` (before clipping)."""
        draw: dict[str, Any] = {"generator": generator, "device": device, "dtype": torch.float64}
        if self.norm == "2" and dtype != torch.float64:
            draw["normals"] = torch.float32  # what float32 samples can hold, drawn 4x faster
        if self.mode == "ball":
            u = _BALLS[self.norm](count, dim, **draw)
            return (u * self.radius).to(dtype)
        u = _REFERENCE_BASE[self.norm](count, dim, **draw)
        a, b = REFERENCE_SCALE[self.norm]
        if a == b:
            s = torch.full((count, 1), self.radius, device=device, dtype=torch.float64)
        else:
            # s ~ U[a, b] scaled so that b maps to the radius (a = 0 for L1 and L2).
            lo = a / b * self.radius
            s = lo + (self.radius - lo) * torch.rand(
                count, 1, generator=generator, device=device, dtype=torch.float64
            )
        return (u * s).to(dtype)

    def draw(self, x0: Tensor, count: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``(count, *x0.shape)`` samples ``clip(x0 + delta, box)`` on ``x0``'s device/dtype.

        ``x0`` is one input without the batch axis, any shape."""
        dim = x0.numel()
        delta = self.perturbations(
            count, dim, generator=generator, device=x0.device, dtype=x0.dtype
        )
        x = x0.reshape(1, dim) + delta
        if self.box is not None:
            x = x.clamp_(self.box[0], self.box[1])
        return x.reshape(count, *x0.shape)
