"""Errors nnbound raises for bad input: each carries one line a user can act on.

The CLI turns any :class:`NnboundError` into that line and exit code 2; anything else is a bug.
"""

from __future__ import annotations


class NnboundError(Exception):
    """Base class of every error caused by what the user passed in."""


class InputError(NnboundError, ValueError):
    """An argument, an input array or a data file is invalid (shape, NaN/inf, range, eps < 0)."""


class ModelFormatError(NnboundError):
    """A model file is missing, corrupt, truncated or not in the format its name says."""


class UnsupportedError(NnboundError):
    """A layer, operator or option that nnbound does not handle (the message names it)."""
