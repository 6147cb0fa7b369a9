"""Validation of every command's counts, sizes, radii and timeouts, once, at the edge.

``main`` calls :func:`validate_args` on the parsed namespace before a command runs, so a bad
value ends as one line naming the flag and exit code 2 before any model is loaded or any work
is done (``--batch-size 0`` used to loop forever or end in a ``ZeroDivisionError`` deep in a
task; ``--eps inf`` and ``--timeout nan`` were accepted).

The rules are keyed by the argparse destination, so a flag gets the same rule in every command
that has it; a command where a value has another meaning overrides it in
:data:`COMMAND_RULES`. ``None`` means "not given" (its default is chosen later) and is never
checked.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from nnbound.errors import InputError

Rule = Callable[[str, object], None]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _number(flag: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{flag} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{flag} must be a finite number, got {value}")
    return float(value)


def at_least(low: int) -> Rule:
    """An integer count ``>= low``."""

    def rule(flag: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{flag} must be an integer >= {low}, got {value!r}")

    return rule


def finite_nonnegative(flag: str, value: object) -> None:
    """A finite number ``>= 0`` (a radius that may be zero: the ball is its centre)."""
    if _number(flag, value) < 0:
        raise InputError(f"{flag} must be >= 0, got {value}")


def finite_positive(flag: str, value: object) -> None:
    """A finite number ``> 0`` (a search start, a timeout)."""
    if not _number(flag, value) > 0:
        raise InputError(f"{flag} must be > 0, got {value}")


def finite(flag: str, value: object) -> None:
    """Any finite number."""
    _number(flag, value)


def new_folder(flag: str, value: object) -> None:
    """A folder to write into: refused when the path exists and is not a folder (checked
    before the work, not after it)."""
    path = Path(str(value))
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {value} exists and is not a folder; give a folder path")


# dest -> rule, for every command that has the flag.
RULES: dict[str, Rule] = {
    "numimage": at_least(1),
    "startimage": at_least(0),
    "batch_size": at_least(1),
    "clever_batch": at_least(1),
    "nsamp": at_least(1),
    "niters": at_least(1),
    "clever_nsamp": at_least(1),
    "clever_niters": at_least(1),
    "steps": at_least(1),
    "lipsteps": at_least(1),
    "pgd_steps": at_least(1),
    "pgd_restarts": at_least(1),
    "pgd_search_steps": at_least(1),
    "cw_steps": at_least(1),
    "cw_binary_steps": at_least(1),
    "ead_steps": at_least(1),
    "ead_binary_steps": at_least(1),
    "eps": finite_nonnegative,
    "timeout": finite_positive,
    "liplogstart": finite,
    "liplogend": finite,
    "cw_lr": finite_positive,
    "ead_beta": finite_nonnegative,
    "radius": finite_positive,
    "image_size": at_least(1),
    "report": new_folder,
}

# Where a flag means something stricter: the eps a radius search starts from (it is scaled by
# 10 until the bound fails, so 0 never moves) or the largest eps of a grid.
COMMAND_RULES: dict[str, dict[str, Rule]] = {
    "robustness": {"eps": finite_positive},
    "evaluate": {"eps": finite_positive},
    "landscape": {"eps": finite_positive},
    "lipschitz": {"eps": finite_positive},
}


def validate_args(args: argparse.Namespace) -> None:
    """Check every value of ``args`` a rule covers; raise :class:`InputError` naming the flag
    of the first bad one."""
    command = getattr(args, "command", None)
    rules = {**RULES, **COMMAND_RULES.get(str(command), {})}
    for dest, rule in rules.items():
        value = getattr(args, dest, None)
        if value is not None:
            rule(_flag(dest), value)


def check_batch_not_empty(count: int, source: str) -> None:
    """Refuse a batch of no inputs (an empty ``.npy``, ``--startimage`` past the data)."""
    if count < 1:
        raise InputError(f"{source} holds no inputs (0 images); give at least one")
