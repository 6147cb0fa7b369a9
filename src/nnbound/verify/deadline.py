"""The one time limit of a verification run, checked inside every long loop.

A run's stages (attacks, root bound passes, alpha-CROWN steps, branch and bound, each
disjunct) all read the same :class:`Deadline`. Loops that can stop cleanly ask
:meth:`Deadline.passed`; code that cannot return early -- a bound pass deep inside the engine
-- gets :meth:`Deadline.checkpoint`, a callable the engine runs between nodes, which raises
:class:`DeadlineReached`; the verifier and the searches catch it and answer ``timeout``. So
the answer comes at most one engine node's backward step (or one PGD step, one batch of
forward passes) after the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from nnbound.errors import InputError


class DeadlineReached(Exception):
    """Raised by a :meth:`Deadline.checkpoint` inside a computation that cannot stop on its
    own (a bound pass); it carries no result, the catcher answers ``timeout``."""


@dataclass(frozen=True)
class Deadline:
    """A ``time.monotonic()`` instant.

    Attributes:
        end: the instant (``math.inf``: never).
    """

    end: float

    @staticmethod
    def after(seconds: float) -> Deadline:
        """The instant ``seconds`` from now."""
        return Deadline(time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds left (negative once passed)."""
        return self.end - time.monotonic()

    def passed(self) -> bool:
        return time.monotonic() > self.end

    def sooner(self, seconds: float) -> Deadline:
        """This deadline or ``seconds`` from now, whichever comes first."""
        return Deadline(min(self.end, time.monotonic() + seconds))

    def check(self) -> None:
        """Raise :class:`DeadlineReached` once passed."""
        if time.monotonic() > self.end:
            raise DeadlineReached

    @property
    def checkpoint(self) -> Callable[[], None]:
        """:meth:`check` as a plain callable (what the bound engine takes)."""
        return self.check


def checked_timeout(seconds: float, what: str = "timeout") -> float:
    """``seconds`` as a float when it is a finite number > 0; InputError naming ``what``
    otherwise (0, negative, NaN or infinite limits have no meaning for a verifier that must
    answer)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be a finite number of seconds > 0, got {seconds!r}")
    return value


__all__ = ["Deadline", "DeadlineReached", "checked_timeout"]
