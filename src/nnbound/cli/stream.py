"""Per-image results as they finish: one flushed line (or JSON line) per image on stdout,
progress with an ETA on stderr, and what finished kept when the user presses Ctrl-C.

A run over many images can take minutes; a user who sees nothing until the end cannot tell a
slow run from a stuck one, and an interrupt used to lose every finished image. The commands
that loop over images (robustness, lipschitz, landscape, clever, evaluate) share this:

* ``--jsonl``: one JSON object per image (``"record": "image"``) as it finishes, then one
  summary object (``"record": "summary"``, the ``--json`` record without its per-image list).
  ``--json`` keeps its single final record (unchanged, plus ``"interrupted"``).
* progress on stderr only when stderr is a terminal or with ``--progress`` (never on stdout).
* an interrupt stops the loop; the records that finished are printed / written, the output
  says ``interrupted``, and the command exits with :data:`EXIT_INTERRUPTED`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

EXIT_INTERRUPTED = 130  # the shell's code for SIGINT (128 + 2)


def add_stream_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("streaming")
    g.add_argument(
        "--jsonl",
        action="store_true",
        help="one JSON line per image on stdout as it finishes, then a summary line",
    )
    g.add_argument(
        "--progress",
        action="store_true",
        help="progress and ETA on stderr even when stderr is not a terminal",
    )


# After the first span, a span is sized to take about this long at the time per item the
# caller has spent on the spans so far: long enough that per-pass costs amortise, short enough
# that progress keeps showing.
SPAN_SECONDS = 1.0


def growing_spans(
    n: int,
    max_batch: int,
    *,
    span_seconds: float = SPAN_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` spans covering ``range(n)``: one row first, then each span at least twice
    the one before, grown further to about ``span_seconds`` of work, up to ``max_batch``.

    Batches amortise the per-pass cost, but the first result should arrive after one image's
    work, not a full batch's. The work per row is measured as the time the caller spends
    between this generator's yields (its processing of the spans so far): where one image
    takes milliseconds (``mnist-fc-3layer``) the second span is the whole batch, where it
    takes seconds the spans double, reaching the full batch after log2(max_batch) spans."""
    cap = max(1, max_batch)
    size, lo, spent = 1, 0, 0.0
    while lo < n:
        hi = min(n, lo + min(size, cap))
        start = clock()
        yield lo, hi
        spent += clock() - start
        per_row = spent / hi
        fill = int(span_seconds / per_row) if per_row > 0 else cap
        size = max(2 * size, fill)
        lo = hi


def _clock(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class ResultStream:
    """Writes records as they finish and shows progress.

    ``emit(record, line)`` writes ``line`` (text mode) or ``record`` as a JSON line
    (``--jsonl``); nothing per image with ``--json``, whose single record is printed at the end.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        total: int,
        *,
        name: str,
        unit: str = "images",
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.jsonl = bool(getattr(args, "jsonl", False))
        self.json = bool(getattr(args, "json", False)) and not self.jsonl
        quiet = bool(getattr(args, "quiet", False))
        forced = bool(getattr(args, "progress", False))
        self.tty = self.err.isatty()
        self.show_progress = not quiet and (forced or self.tty)
        self.total = total
        self.name = name
        self.unit = unit
        self.done = 0
        self.interrupted = False
        self.t0 = time.perf_counter()
        self._last_draw = 0.0

    @property
    def text(self) -> bool:
        return not (self.json or self.jsonl)

    def emit(self, record: dict[str, Any], line: str | None = None) -> None:
        """One finished item: its JSON line or text line, flushed at once."""
        if self.jsonl:
            self.out.write(json.dumps({"record": "image", **record}, allow_nan=True) + "\n")
        elif self.text and line is not None:
            self.out.write(line + "\n")
        self.out.flush()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.draw()

    def draw(self, force: bool = False) -> None:
        if not self.show_progress:
            return
        now = time.perf_counter()
        # A terminal line is redrawn at most 10 times a second; a log file gets one line per
        # update (only with --progress), so it is not flooded either way.
        if not force and self.tty and now - self._last_draw < 0.1 and self.done < self.total:
            return
        self._last_draw = now
        elapsed = now - self.t0
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ETA {_clock(elapsed / self.done * (self.total - self.done))}"
        msg = f"{self.name}: {self.done}/{self.total} {self.unit}, {_clock(elapsed)} elapsed{eta}"
        if self.tty:
            self.err.write("\r\x1b[K" + msg)
        else:
            self.err.write(msg + "\n")
        self.err.flush()

    def close(self) -> None:
        """Clears the terminal progress line; says how far an interrupted run got."""
        if self.show_progress and self.tty:
            self.err.write("\r\x1b[K")
        if self.interrupted:
            self.err.write(
                f"nnbound: interrupted: {self.done} of {self.total} {self.unit} finished; "
                "reporting those\n"
            )
        self.err.flush()

    def summary(self, record: dict[str, Any]) -> None:
        """The final record: with ``--jsonl`` the summary line (without the per-image list,
        already streamed); with ``--json`` the whole record."""
        if self.jsonl:
            rest = {k: v for k, v in record.items() if k != "images"}
            self.out.write(json.dumps({"record": "summary", **rest}, allow_nan=True) + "\n")
        elif self.json:
            json.dump(record, self.out, indent=2, allow_nan=True)
            self.out.write("\n")
        self.out.flush()

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.interrupted else 0
