"""Result files after faults (issue 19 #5): concurrent writers never mix, an interrupted run
never leaves a half-written report passing as complete nor a previous run's result, and one
bad instance of a ``verify --batch`` is reported in its row while the batch goes on."""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nnbound.cli.main import main
from nnbound.report.atomic import INTERRUPTED_MARK, replacing_folder, write_text_atomic

DATA = Path(__file__).resolve().parents[1] / "data"
VNN = DATA / "vnncomp"
SRC = Path(__file__).resolve().parents[2] / "src"

# Two answers of very different lengths, as the sat witness and unsat line.
SAT = "sat\n(" + " ".join(f"(X_{i} 0.{i:06d})" for i in range(100_000)) + ")\n"
UNSAT = "unsat\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _writer(path: str, text: str, times: int) -> None:
    for _ in range(times):
        write_text_atomic(path, text)


def test_concurrent_writers_never_produce_a_mixed_file(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_text_atomic(path, UNSAT)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), text, 300)) for text in (SAT, UNSAT, SAT)]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):
        text = path.read_text()
        assert text in (SAT, UNSAT), f"a mixed or partial file of {len(text)} chars"
        seen.add(text)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert path.read_text() in (SAT, UNSAT)
    assert [f.name for f in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind


def test_a_failed_folder_build_keeps_the_old_report_and_marks_it(tmp_path: Path) -> None:
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("old")
    with pytest.raises(RuntimeError), replacing_folder(report) as staging:
        (staging / "sandwich.png").write_bytes(b"new")
        raise RuntimeError("interrupted after the plots")
    assert sorted(f.name for f in report.iterdir()) == [INTERRUPTED_MARK, "index.html"]
    assert (report / "index.html").read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["report"]  # staging removed
    with replacing_folder(report) as staging:
        (staging / "index.html").write_text("new")
    assert [f.name for f in report.iterdir()] == ["index.html"]  # the mark went with it
    assert (report / "index.html").read_text() == "new"


_KILLED_RUN = """
import sys, time
sys.path.insert(0, {src!r})
import nnbound.report.html as html

def write_report(ev, directory, **kw):
    from pathlib import Path
    (Path(directory) / "sandwich.png").write_bytes(b"new plot")
    print("PLOTS", flush=True)
    time.sleep(600)  # killed here: after the plots, before index.html

html.write_report = write_report
from nnbound.cli.main import main
main(["evaluate", "mnist-fc-3layer", "--methods", "pgd", "--numimage", "1",
      "--pgd-steps", "5", "--pgd-search-steps", "2", "--quiet", "--report", {report!r}])
"""


def test_a_killed_evaluate_leaves_the_old_report_marked_and_no_new_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("old page")
    (report / "sandwich.png").write_bytes(b"old plot")
    script = _KILLED_RUN.format(src=str(SRC), report=str(report))
    log = tmp_path / "stderr.txt"
    with (
        open(log, "w") as err,
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=err, text=True
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            # the command's table comes first; PLOTS once the plots are written
            for line in iter(proc.stdout.readline, ""):
                if line.strip() == "PLOTS":
                    break
            else:
                pytest.fail(f"the run ended early: {log.read_text()}")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert (report / "index.html").read_text() == "old page"
    assert (report / "sandwich.png").read_bytes() == b"old plot"
    assert "did not finish" in (report / INTERRUPTED_MARK).read_text()
    # the new plots stayed in a hidden staging folder, never beside the old page
    assert not any(
        f.name.endswith(".png") and f.read_bytes() == b"new plot" for f in report.iterdir()
    )


def test_an_interrupted_verify_leaves_no_previous_result(capsys, monkeypatch, tmp_path) -> None:
    import nnbound.verify.verifier as verifier

    result = tmp_path / "out.txt"
    result.write_text("sat\n((X_0 1.0))\n")  # a previous run's answer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verifier, "verify_files", interrupted)
    net, prop = DATA / "onnx" / "test_sat.onnx", VNN / "test_prop.vnnlib"
    code, out, _ = run(capsys, "verify", str(net), str(prop), "--result", str(result))
    assert code == 130 and out == ""
    assert not result.exists()


def test_a_bad_instance_is_reported_in_its_row_and_the_batch_goes_on(capsys, tmp_path) -> None:
    batch = tmp_path / "instances.csv"
    batch.write_text(
        "onnx,vnnlib,timeout_s,expected\n"
        f"{DATA / 'onnx' / 'test_nano.onnx'},{VNN / 'test_nano.vnnlib'},30,unsat\n"
        f"{tmp_path / 'missing.onnx'},{VNN / 'test_nano.vnnlib'},30,unsat\n"
        f"{VNN / 'test_unsat.onnx'},{VNN / 'test_prop.vnnlib'},30,unsat\n"
    )
    out_csv = tmp_path / "results.csv"
    code, out, err = run(capsys, "verify", "--batch", str(batch), "--result", str(out_csv))
    assert code == 2  # bad input somewhere, reported after every instance ran
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["result"] for r in rows] == ["unsat", "error", "unsat"]
    assert "missing.onnx" in rows[1]["error"] and "not found" in rows[1]["error"]
    assert "error: missing.onnx" in out and err.count("[") == 3
    assert not Path(f"{out_csv}.partial").exists()


def test_batch_rows_are_on_disk_as_each_instance_finishes(capsys, monkeypatch, tmp_path) -> None:
    import nnbound.verify.verifier as verifier

    real = verifier.verify_files
    calls = []

    def second_is_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(verifier, "verify_files", second_is_interrupted)
    batch = tmp_path / "instances.csv"
    batch.write_text(f"{VNN / 'test_unsat.onnx'},{VNN / 'test_prop.vnnlib'},30\n" * 3)
    out_csv = tmp_path / "results.csv"
    out_csv.write_text("stale\n")
    code, _, _ = run(capsys, "verify", "--batch", str(batch), "--result", str(out_csv))
    assert code == 130
    assert not out_csv.exists()  # never the previous run's, never passing as complete
    with open(f"{out_csv}.partial") as fh:
        assert [r["result"] for r in csv.DictReader(fh)] == ["unsat"]
