"""One progress line over all tasks on stderr: done / running / failed, images per second and
the time left. On a terminal the line is redrawn in place; in a log file a line is written at
most every ``interval`` seconds (and at the end), so long sweeps do not flood it."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from nnbound.sweep.execute import TaskResult


class SweepProgress:
    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        quiet: bool = False,
        interval: float = 10.0,
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval = interval
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.running: set[str] = set()
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.images = 0
        self.t0 = time.perf_counter()
        self._last = -float("inf")

    @property
    def images_per_second(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.images / dt if dt > 0 else 0.0

    def line(self) -> str:
        finished = self.done + self.failed
        rate = self.images_per_second
        left = self.total - finished
        eta = ""
        if finished and left:
            per_task = (time.perf_counter() - self.t0) / finished
            eta = f", about {per_task * left:.0f} s left"
        retries = f", {self.retries} retried" if self.retries else ""
        return (
            f"[sweep] {finished}/{self.total} tasks: {self.done} done, {len(self.running)} "
            f"running, {self.failed} failed{retries}; {rate:.2f} images/s{eta}"
        )

    def _show(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
        elif force or now - self._last >= self.interval:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last = now

    def started(self, task_id: str) -> None:
        self.running.add(task_id)
        self._show()

    def finished(self, result: TaskResult) -> None:
        self.running.discard(result.task_id)
        if result.error is None:
            self.done += 1
            self.images += result.num_images
        else:
            self.failed += 1
            if not self.quiet:
                self._clear()
                self.stream.write(f"[sweep] FAILED {result.task_id}: {result.error}\n")
        self._show(force=self.done + self.failed == self.total)

    def retried(self, task_id: str, reason: str) -> None:
        self.retries += 1
        self.running.discard(task_id)
        if not self.quiet:
            self._clear()
            self.stream.write(f"[sweep] retrying {task_id}: {reason}\n")

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["SweepProgress"]
