"""The CLI's spans: one row first, then at least doubling, grown to about ``span_seconds`` of
work at the time per row the caller spent so far, never past the batch, covering every row."""

from __future__ import annotations

from nnbound.cli.stream import growing_spans


class _FakeClock:
    """A clock the test advances by hand: ``per_row`` seconds for each row processed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _spans(n: int, batch: int, per_row: float, span_seconds: float = 1.0) -> list[int]:
    clock = _FakeClock()
    sizes = []
    for lo, hi in growing_spans(n, batch, span_seconds=span_seconds, clock=clock):
        sizes.append(hi - lo)
        clock.now += per_row * (hi - lo)
    return sizes


def test_fast_rows_jump_to_the_batch_after_the_first():
    # 15 ms a row: after the first row the next span is the rest of the batch
    assert _spans(99, 100, 0.015) == [1, 66, 32]
    assert _spans(1000, 100, 0.001) == [1] + [100] * 9 + [99]


def test_slow_rows_double():
    assert _spans(40, 100, 2.0) == [1, 2, 4, 8, 16, 9]
    assert _spans(40, 8, 2.0) == [1, 2, 4, 8, 8, 8, 8, 1]


def test_spans_cover_every_row_once():
    for n, batch, per_row in ((1, 5, 0.1), (7, 3, 0.0), (50, 50, 0.05), (0, 4, 1.0)):
        sizes = _spans(n, batch, per_row)
        assert sum(sizes) == n
        assert all(0 < s <= max(1, batch) for s in sizes)
        assert not sizes or sizes[0] == 1
