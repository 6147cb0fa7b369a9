"""Every ``nnbound ...`` command in the README's code blocks runs as written.

Commands run in order in one folder (later ones use files earlier ones write: ``x.npy``,
``leaky.safetensors``). A command whose README comment line says ``long:`` runs with the
reductions below (and only those); commands that need files the README cannot make (VNN-COMP
instances, ImageNet weights and images, a ``--data-dir``) are skipped with the reason. The
setup lines (``pip install ...``, ``nnbound demo``) are checked by CI's own clean-clone run."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from nnbound.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"

# README text in the command -> why it cannot run here
NEEDS_FILES = {
    "net.onnx prop.vnnlib": "needs a VNN-COMP instance (ONNX + VNN-LIB files)",
    "--batch instances.csv": "needs a VNN-COMP instances.csv",
    "--data-dir": "needs a dataset folder (--data-dir)",
    "--weights": "needs ImageNet weights and images",
}
# flag -> value used in place of the README's, for commands marked `long:` in the README
LONG_REDUCTIONS = {"--numimage": "1", "--nsamp": "32", "--niters": "10"}
# commands already covered elsewhere, or the set-up itself: the sweep section's plan is
# parsed from the README and its grid run by tests/sweep (a README-sized sweep takes a minute)
NOT_HERE = ("nnbound demo", "nnbound sweep")


def readme_commands() -> list[tuple[str, bool]]:
    """``(command, long)`` for each ``nnbound`` command in a bash block, continuation lines
    joined and trailing comments dropped; ``long`` when the comment line above says ``long:``."""
    text = README.read_text()
    found: list[tuple[str, bool]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines = block.replace("\\\n", " ").splitlines()
        long_next = False
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                long_next = stripped.startswith("# long:")
                continue
            if stripped.startswith("nnbound "):
                found.append((stripped.split(" #")[0].strip(), long_next))
            long_next = False
    return found


def _reduced(argv: list[str]) -> list[str]:
    out = list(argv)
    for flag, value in LONG_REDUCTIONS.items():
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


def test_readme_lists_the_commands_a_user_copies() -> None:
    commands = [c for c, _ in readme_commands()]
    assert any(c.startswith("nnbound data export") for c in commands)
    assert any(c.startswith("nnbound bounds") and "--input x.npy" in c for c in commands)
    assert any(long for _, long in readme_commands()), "the long CLEVER run is marked"


def test_every_readme_command_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("matplotlib")  # the README's install line includes the plot extra
    monkeypatch.chdir(tmp_path)
    ran, skipped, times = [], [], []
    for command, long in readme_commands():
        if command.startswith(NOT_HERE):
            continue
        why = next((w for k, w in NEEDS_FILES.items() if k in command), None)
        if why is not None:
            skipped.append((command, why))
            continue
        argv = shlex.split(command)[1:]
        if long:
            argv = _reduced(argv)
        t0 = time.perf_counter()
        code = main(argv)
        out, err = capsys.readouterr()
        times.append((time.perf_counter() - t0, command))
        assert code == 0, f"{command}\n{err[-2000:]}"
        assert out.strip() or "wrote" in err, f"{command} printed nothing"
        ran.append(command)
    assert len(ran) >= 14
    assert {w for _, w in skipped} <= set(NEEDS_FILES.values())
    with capsys.disabled():
        for seconds, command in sorted(times, reverse=True)[:5]:
            print(f"\n  {seconds:6.1f} s  {command[:90]}", end="")
