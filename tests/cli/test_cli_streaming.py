"""Results stream while a run goes on, and Ctrl-C keeps what finished: the CLI is run as a
subprocess (``Popen``) and read line by line, as a user's terminal or a pipe would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import nnbound
from nnbound.cli.main import main

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
        # A shell's background job ignores SIGINT and its children inherit that (Python then
        # installs no KeyboardInterrupt handler): the child starts with the default action.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# 90 images one at a time, every search step evaluated (--reference): about half a CPU second
# per image, so the run is still going when the test has read two records and interrupts it.
LONG_RUN = (
    "robustness",
    "mnist-fc-3layer",
    "--numimage",
    "90",
    "--batch-size",
    "1",
    "--reference",
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
    assert summary["numimage"] == len(images) < 90
    assert "interrupted" in err


def test_text_mode_interrupt_prints_finished_lines_and_an_interrupted_summary(
    capsys, monkeypatch
) -> None:
    import nnbound.cli.cmd_robustness as robustness

    real, calls = robustness.certified_radius, []

    def interrupted_third_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(robustness, "certified_radius", interrupted_third_time)
    argv = ["robustness", "mnist-fc-3layer", "--numimage", "8", "--steps", "3", "--quiet"]
    assert main([*argv, "--batch-size", "2"]) == 130
    lines = capsys.readouterr().out.splitlines()
    # spans of 1 and 2 images (the batch) finished before the third was interrupted
    assert [v.split(",")[0] for v in lines[:-1]] == [f"[L1] id = {i}" for i in range(3)]
    assert lines[-1].startswith("[L0] model = mnist-fc-3layer")
    assert lines[-1].endswith("numimage = 3, interrupted")


def test_progress_goes_to_stderr_only_and_json_keeps_one_record(capsys) -> None:
    argv = ["robustness", "mnist-fc-3layer", "--numimage", "2", "--steps", "3", "--progress"]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert "robustness: 2/2 images" in err and "ETA" in err
    record = json.loads(out)
    assert record["interrupted"] is False and len(record["images"]) == 2


STREAMING_RUNS = {
    "lipschitz": ["lipschitz", "mnist-fc-3layer", "--numimage", "2", "--lipsteps", "2"],
    "landscape": ["landscape", "mnist-fc-3layer", "--numimage", "2", "--lipsteps", "1"],
    "clever": [
        "clever", "mnist-fc-3layer", "--numimage", "2", "--targettype", "top2",
        "--nsamp", "16", "--niters", "5", "--norms", "2",
    ],
    "evaluate": [
        "evaluate", "mnist-fc-3layer", "--numimage", "2", "--methods", "ibp,pgd",
        "--pgd-steps", "5", "--pgd-search-steps", "2",
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(STREAMING_RUNS))
def test_jsonl_is_one_record_per_image_then_a_summary(command: str, capsys) -> None:
    assert main([*STREAMING_RUNS[command], "--jsonl", "--quiet"]) == 0
    lines = [json.loads(v) for v in capsys.readouterr().out.splitlines()]
    assert [r["record"] for r in lines] == ["image", "image", "summary"]
    assert "images" not in lines[-1] and lines[-1]["interrupted"] is False
    if command == "landscape":
        # a global bound holds on the R_max ball too: the smaller of the two is reported
        for r in lines[:-1]:
            local, glob = r["lipschitz_max_local"], r["opnorm_global_lipschitz"]
            assert r["lipschitz_max"] == min(local, glob)


def test_an_interrupt_inside_a_task_keeps_the_finished_images(capsys, monkeypatch) -> None:
    import nnbound.tasks.lipschitz as lipschitz

    real, calls = lipschitz.lipschitz_curve, []

    def interrupted_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lipschitz, "lipschitz_curve", interrupted_second_time)
    argv = [*STREAMING_RUNS["lipschitz"], "--batch-size", "1", "--json", "--quiet"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["interrupted"] is True and record["numimage"] == 1
    assert len(record["images"]) == 1 and record["images"][0]["index"] == 0
    assert "interrupted: 1 of 2 images finished" in captured.err
