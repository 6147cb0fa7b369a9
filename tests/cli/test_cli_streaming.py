"""Results stream while a run goes on, and Ctrl-C keeps what finished: the CLI is run as a
subprocess (``Popen``) and read line by line, as a user's terminal or a pipe would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nnbound

SRC = str(Path(nnbound.__file__).resolve().parents[1])


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The rest of stdout and stderr. (``communicate`` would read the pipes' file descriptors
    and lose what ``readline`` already buffered.)"""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=120)
    return out, err


def _start(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "nnbound", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# 60 images one or two at a time: far longer than reading two records takes, so the run is
# still going when the test looks (each image is a full binary search).
LONG_RUN = (
    "robustness",
    "mnist-fc-3layer",
    "--numimage",
    "60",
    "--batch-size",
    "2",
    "--targettype",
    "untargeted",
    "--jsonl",
)


def test_first_record_arrives_before_the_run_ends_and_sigint_keeps_it() -> None:
    with _start(*LONG_RUN) as proc:
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            assert proc.poll() is None, "the first record came only when the run had ended"
            assert first["record"] == "image" and first["index"] == 0 and first["radius"] > 0
            second = json.loads(proc.stdout.readline())
            assert second["record"] == "image"
            proc.send_signal(signal.SIGINT)
            rest, err = _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    lines = [json.loads(v) for v in rest.splitlines()]
    summary = lines[-1]
    assert summary["record"] == "summary" and summary["interrupted"] is True
    images = [first, second, *lines[:-1]]
    assert all(r["record"] == "image" for r in images)
    assert summary["numimage"] == len(images) < 60
    assert "interrupted" in err


def test_text_mode_interrupt_prints_finished_lines_and_an_interrupted_summary() -> None:
    argv = [a for a in LONG_RUN if a != "--jsonl"]
    with _start(*argv) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.startswith("[L1] id = 0,")
            proc.send_signal(signal.SIGINT)
            rest, _ = _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130
    last = rest.splitlines()[-1]
    assert last.startswith("[L0] model = mnist-fc-3layer") and last.endswith("interrupted")
    done = 1 + sum(v.startswith("[L1]") for v in rest.splitlines())
    assert f"numimage = {done}," in last


def test_progress_goes_to_stderr_only_and_json_keeps_one_record() -> None:
    with _start(
        "robustness", "mnist-fc-3layer", "--numimage", "2", "--steps", "3", "--progress", "--json"
    ) as proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "robustness: 2/2 images" in err
    record = json.loads(out)
    assert record["interrupted"] is False and len(record["images"]) == 2
