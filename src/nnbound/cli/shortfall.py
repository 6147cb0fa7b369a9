"""Saying so when a run covers fewer images than asked for (misclassified images skipped, a
class filter, the end of the dataset): a silent 99 for ``--numimage 1000`` reads as a bug."""

from __future__ import annotations

import argparse
from typing import Any

from nnbound.cli.common import note


def shortfall(args: argparse.Namespace, selected: int, source: str) -> dict[str, Any]:
    """A note on stderr when ``selected < --numimage``; returns the fields for the record
    (``numimage_requested`` always, ``shortfall`` with the reason when short)."""
    asked = int(args.numimage)
    fields: dict[str, Any] = {"numimage_requested": asked}
    if selected < asked:
        why = (
            f"only {selected} of the {asked} requested images qualify in {source} from "
            f"--startimage {args.startimage} (misclassified images are skipped"
            + (f", --targettype {args.targettype} filters" if _filters(args) else "")
            + "; the source has no more)"
        )
        note(args, f"note: {why}")
        fields["shortfall"] = why
    return fields


def _filters(args: argparse.Namespace) -> bool:
    t = str(getattr(args, "targettype", ""))
    return t.strip().lstrip("-").isdigit()
