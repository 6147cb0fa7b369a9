"""The ``nnbound`` command keeps freed memory in the process (glibc's mmap and trim thresholds
raised at start), unless ``NNBOUND_KEEP_FREED_MEMORY=0``; elsewhere it changes nothing."""

from __future__ import annotations

import platform

import pytest

from nnbound import allocator
from nnbound.cli import main as cli_main


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_thresholds_are_set_on_glibc() -> None:
    assert allocator.keep_freed_memory()
    assert allocator.keep_freed_memory()  # idempotent


def test_other_platforms_change_nothing(monkeypatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert not allocator.keep_freed_memory()


@pytest.mark.parametrize(("setting", "called"), [(None, True), ("1", True), ("0", False)])
def test_the_command_sets_them_unless_turned_off(monkeypatch, capsys, setting, called) -> None:
    calls = []
    monkeypatch.setattr(cli_main, "keep_freed_memory", lambda: calls.append(1) or True)
    if setting is None:
        monkeypatch.delenv("NNBOUND_KEEP_FREED_MEMORY", raising=False)
    else:
        monkeypatch.setenv("NNBOUND_KEEP_FREED_MEMORY", setting)
    assert cli_main.main(["models"]) == 0
    assert bool(calls) == called
    assert capsys.readouterr().out  # the command itself ran
