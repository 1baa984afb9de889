"""Issue 10, faults 2 and 3: a results directory never loses a row and never mixes two runs or two settings.

A torn last line must not swallow the next row; a second run into a directory in use is refused; ``--resume``
refuses settings that differ from the rows it continues; ``--retry-failed`` measures failed cells again and
every reader then sees one current row per cell. The run tests use real tiny runs of one cell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import suite
from bench.results import ResultsBusy, ResultsFile, summary_markdown, write_tables

REPO = Path(__file__).resolve().parent.parent
# One cell: wide_deep at batch 2 in FP32 on ort-cpu, as short as the timer allows.
ONE_CELL = [
    "--models", "wide_deep", "--size", "tiny", "--engines", "ort-cpu", "--batch-sizes", "2", "--precisions", "fp32",
    "--warmup-s", "0", "--duration-s", "0.1", "--min-iters", "2", "--accuracy-samples", "2",
]  # fmt: skip


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def readable(path: Path) -> list[dict]:
    """The lines of a JSON-lines file that parse, as a reader that skips torn lines sees them."""
    records = []
    for line in lines_of(path):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# ------------------------------------------------------------------------------------- fault 2: torn line


def test_row_after_a_torn_last_line_is_kept(tmp_path):
    results = ResultsFile(tmp_path)
    results.append({"cell_id": "a", "status": "ok"}, [1.0])
    # A process killed in the middle of its write leaves a line without its newline in both files.
    with open(results.path, "a") as handle:
        handle.write('{"cell_id": "b", "sta')
    with open(results.samples_path, "a") as handle:
        handle.write('{"cell_id": "b", "samples_ms": [1.')
    results.append({"cell_id": "c", "status": "ok"}, [3.0])
    results.append({"cell_id": "d", "status": "ok"}, [4.0])

    assert [row["cell_id"] for row in results.rows()] == ["a", "c", "d"]
    assert results.finished_ids() == {"a", "c", "d"}
    # The fragment stays as one unreadable line of its own; nothing is glued onto it.
    assert lines_of(results.path)[1] == '{"cell_id": "b", "sta'
    assert [record["cell_id"] for record in readable(results.samples_path)] == ["a", "c", "d"]
    assert readable(results.samples_path)[1]["samples_ms"] == [3.0]


def test_append_to_an_empty_file_adds_no_blank_line(tmp_path):
    results = ResultsFile(tmp_path)
    results.path.touch()
    results.append({"cell_id": "a", "status": "ok"})
    assert results.path.read_text() == json.dumps({"cell_id": "a", "status": "ok"}) + "\n"


# ------------------------------------------------------------------------------ fault 3a: one run at a time

HOLD = """
import fcntl, os, sys
handle = open(os.path.join(sys.argv[1], ".lock"), "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.truncate(0)
handle.write(str(os.getpid()))
handle.flush()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held_by_other_process(tmp_path):
    """A results directory whose lock another process holds (as a running ``suite.py run`` does)."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    yield out, holder
    holder.stdin.close()
    holder.wait(timeout=30)


def test_second_run_into_a_directory_in_use_is_refused(held_by_other_process, capsys):
    out, holder = held_by_other_process
    assert suite.main(["run", *ONE_CELL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    expected = f"error: {out} is in use by another run (pid {holder.pid}); wait for it or choose another --out"
    assert err == expected, err
    # Refused before anything was written: no env.json, no rows, no tables.
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_lock_is_exclusive_and_released(tmp_path):
    results = ResultsFile(tmp_path)
    with results.lock():
        # A second open of the lock file is a second holder, even in the same process (flock semantics).
        with pytest.raises(ResultsBusy) as busy:
            ResultsFile(tmp_path).lock()
        assert busy.value.pid == os.getpid()
        assert str(busy.value) == (
            f"{tmp_path} is in use by another run (pid {os.getpid()}); wait for it or choose another --out"
        )
    with ResultsFile(tmp_path).lock():
        pass


def test_lock_dies_with_its_process(tmp_path):
    code = (
        "import sys; from bench.results import ResultsFile; held = ResultsFile(sys.argv[1]).lock(); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(ResultsBusy):
            ResultsFile(tmp_path).lock()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        holder.wait(timeout=30)
    with ResultsFile(tmp_path).lock():
        pass


# --------------------------------------------------------------------- fault 3b and 3c: resume, retry-failed


@pytest.fixture(scope="module")
def one_cell_run(tmp_path_factory):
    """A finished run of one cell; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("one-cell") / "run"
    assert suite.main(["run", *ONE_CELL, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(one_cell_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(one_cell_run, out)
    return out


def test_resume_with_other_settings_is_refused(run_copy, capsys):
    env, rows = (run_copy / "env.json").read_bytes(), (run_copy / "results.jsonl").read_bytes()
    other = [*ONE_CELL[:-8], "--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "2", "--accuracy-samples", "4"]
    other += ["--threads", "1"]
    assert suite.main(["run", *other, "--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --resume with different settings than {run_copy / 'env.json'}: "), err
    assert "timer.duration_s 0.1 -> 0.2" in err and "accuracy_samples 2 -> 4" in err, err
    assert "engine_options.threads unset -> 1" in err, err
    assert err.endswith("; use the same options or another --out") and "\n" not in err, err
    assert (run_copy / "env.json").read_bytes() == env and (run_copy / "results.jsonl").read_bytes() == rows


def test_resume_of_a_directory_from_before_rounds(run_copy, capsys):
    """A directory written before rounds existed was timed in one window per cell: resumed with the preset's
    rounds it is refused, saying so; with --rounds 1 it is continued."""
    env = json.loads((run_copy / "env.json").read_text())
    assert env["settings"].pop("rounds") == 5
    (run_copy / "env.json").write_text(json.dumps(env))
    other = list(ONE_CELL)
    other[other.index("--batch-sizes") + 1] = "1"
    assert suite.main(["run", *other, "--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "rounds 1 -> 5" in err and "\n" not in err, err
    assert suite.main(["run", *other, "--rounds", "1", "--out", str(run_copy), "--resume"]) == 0
    rows = ResultsFile(run_copy).rows()
    assert [(r["batch_size"], r["status"], r.get("rounds")) for r in rows] == [(2, "ok", 5), (1, "ok", 1)]


def test_resume_without_env_json_is_refused(run_copy, capsys):
    (run_copy / "env.json").unlink()
    assert suite.main(["run", *ONE_CELL, "--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot --resume") and "env.json" in err and "\n" not in err, err


def test_resume_may_add_cells_and_keeps_env_json(run_copy):
    before = json.loads((run_copy / "env.json").read_text())
    other = list(ONE_CELL)
    other[other.index("--batch-sizes") + 1] = "1"  # a new cell; the directory still holds the batch-2 one
    assert suite.main(["run", *other, "--out", str(run_copy), "--resume"]) == 0
    rows = ResultsFile(run_copy).rows()
    assert [(r["batch_size"], r["status"]) for r in rows] == [(2, "ok"), (1, "ok")]
    after = json.loads((run_copy / "env.json").read_text())
    # The matrix grows to cover every row of the directory; everything else is what the first run recorded.
    assert after["settings"]["batch_sizes"] == {"wide_deep": [2, 1]}
    after["settings"]["batch_sizes"] = before["settings"]["batch_sizes"]
    assert after == before


def mark_failed(out: Path) -> str:
    """Rewrite the run's only row as a failure; returns its cell id."""
    (row,) = [json.loads(line) for line in lines_of(out / "results.jsonl")]
    row.update(status="failed", error="simulated failure", latency_ms_p50=None)
    (out / "results.jsonl").write_text(json.dumps(row) + "\n")
    return row["cell_id"]


def test_resume_skips_failed_cells_and_retry_failed_measures_them(run_copy):
    cell = mark_failed(run_copy)
    assert suite.main(["run", *ONE_CELL, "--out", str(run_copy), "--resume"]) == 1
    assert len(lines_of(run_copy / "results.jsonl")) == 1

    assert suite.main(["run", *ONE_CELL, "--out", str(run_copy), "--resume", "--retry-failed"]) == 0
    # The file keeps both rows (nothing measured is lost); every reader sees the last one only.
    statuses = [json.loads(line)["status"] for line in lines_of(run_copy / "results.jsonl")]
    assert statuses == ["failed", "ok"]
    results = ResultsFile(run_copy)
    assert [(r["cell_id"], r["status"]) for r in results.rows()] == [(cell, "ok")]
    assert results.finished_ids() == {cell}
    table = pl.read_csv(run_copy / "results.csv")
    assert table["status"].to_list() == ["ok"] and table["cell_id"].to_list() == [cell]
    assert pl.read_parquet(run_copy / "results.parquet").height == 1
    summary = (run_copy / "summary.md").read_text().splitlines()
    assert len(summary) == 3 and "| ok |" in summary[2] and "simulated" not in summary[2]


def test_retry_failed_needs_resume(tmp_path, capsys):
    assert suite.main(["run", *ONE_CELL, "--out", str(tmp_path / "run"), "--retry-failed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --retry-failed") and "--resume" in err and "\n" not in err, err


def test_last_row_of_a_cell_is_the_current_one(tmp_path):
    results = ResultsFile(tmp_path)
    base = {"model": "m", "size": "tiny", "engine": "e", "batch_size": 1}
    results.append({**base, "cell_id": "a", "precision": "fp32", "status": "failed", "error": "boom"})
    results.append({**base, "cell_id": "b", "precision": "int8", "status": "ok", "latency_ms_p50": 1.0})
    results.append({**base, "cell_id": "a", "precision": "fp32", "status": "ok", "latency_ms_p50": 2.0})
    rows = results.rows()
    # One row per cell, the last one written, in the place the cell first took (the matrix order).
    assert [(r["cell_id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    assert results.finished_ids() == {"a", "b"}
    assert results.finished_ids(except_failed=True) == {"a", "b"}
    frame = write_tables(tmp_path)
    assert frame["cell_id"].to_list() == ["a", "b"] and frame["status"].to_list() == ["ok", "ok"]
    summary = summary_markdown(rows).splitlines()
    assert len(summary) == 4 and "boom" not in "".join(summary)
