"""qaudit sweep --out DIR --resume: each audit's report and row written as it finishes; a killed
sweep resumes where it stopped and gives the uninterrupted sweep's rows (issue 22 item 6)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time

import pytest

from qaudit import sweep
from qaudit.errors import ConfigError
from qaudit.report import to_dict
from qaudit.runs import read

from ..conftest import REPO, SAMPLE_CALIB, cli_env
from .test_sweep import without_clock, write_sweep

pytestmark = pytest.mark.slow


def three_models(folder):
    path = write_sweep(folder, broken=False)
    for name in ("b.onnx", "c.onnx"):
        shutil.copy(folder / "models" / "a.onnx", folder / "models" / name)
    # the calibration data beside the sweep file, named relative to it (as the init study's sweeps do)
    shutil.copytree(SAMPLE_CALIB, folder / "calib")
    path.write_text(path.read_text().replace(f'calib = "{SAMPLE_CALIB.as_posix()}"', 'calib = "calib"'))
    return path  # 3 models x 2 methods: 6 audits


def rows(p) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(p))]


def test_a_killed_sweep_resumes_where_it_stopped_with_the_same_rows(tmp_path, run_cli):
    path = three_models(tmp_path / "s")
    whole = run_cli("sweep", str(path), "--out", str(tmp_path / "whole"), "--csv", str(tmp_path / "whole.csv"))
    assert whole.returncode == 0, whole.stderr
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert len(files) == 12 and sum(f.endswith(".row.json") for f in files) == 6, files
    # each report is a qaudit JSON report of its own: `qaudit report` reads it
    first = next(p for p in sorted((tmp_path / "whole").glob("*.json")) if not p.name.endswith(".row.json"))
    assert run_cli("report", str(first), "--quiet").returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qaudit", "sweep", str(path), "--out", str(out), "--quiet"],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out.is_dir() and list(out.glob("*.row.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.row.json")}
    assert 1 <= len(done) < 6, "the sweep finished before it could be killed"

    again = run_cli("sweep", str(path), "--out", str(out), "--csv", str(tmp_path / "resumed.csv"))
    assert run_cli("sweep", str(path), "--out", str(out)).returncode == 2  # no --resume: never overwritten
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = run_cli("sweep", str(path), "--out", str(out), "--resume", "--csv", str(tmp_path / "resumed.csv"))
    assert resumed.returncode == 0, resumed.stderr
    assert rows(tmp_path / "resumed.csv") == rows(tmp_path / "whole.csv")
    # the audits done before the kill were read back, not run again: their row files are untouched
    assert {n: (out / n).stat().st_mtime_ns for n in done} == done
    assert len(list(out.glob("*.row.json"))) == 6
    for p in sorted((tmp_path / "whole").glob("*.row.json")):  # every report equals the uninterrupted one's
        a, b = json.loads(p.read_text()), json.loads((out / p.name).read_text())
        assert a["fingerprint"] == b["fingerprint"]
        ra = read(json.loads((tmp_path / "whole" / a["report"]).read_text()))
        rb = read(json.loads((out / b["report"]).read_text()))
        assert (
            without_clock(to_dict(ra.runs[0][1] if hasattr(ra, "runs") else ra))["layers"]
            == without_clock(to_dict(rb.runs[0][1] if hasattr(rb, "runs") else rb))["layers"]
        )


def test_resume_reads_back_only_jobs_of_the_same_model_and_settings(tmp_path, monkeypatch):
    path = three_models(tmp_path / "s")
    out = tmp_path / "out"
    first = sweep.run(sweep.load(path), out=out)
    plan = sweep.load(path)
    files = sweep.JobFiles(plan, out, resume=True)
    assert sorted(files.done()) == [j.index for j in plan.jobs]
    # the same sweep file named from another folder (relative paths) is the same sweep
    monkeypatch.chdir(tmp_path)
    assert sorted(sweep.JobFiles(sweep.load(path.relative_to(tmp_path)), out, resume=True).done()) == sorted(
        files.done()
    )
    monkeypatch.chdir(path.parent)
    assert sorted(sweep.JobFiles(sweep.load("sweep.toml"), out, resume=True).done()) == sorted(files.done())
    back = sweep.run(plan, out=out, resume=True)
    assert [o.row for o in back] == [o.row for o in first]  # the seconds too: nothing ran again
    # a changed setting and a retrained model (other bytes) run again; the other jobs are read back
    text = path.read_text()
    path.write_text(text.replace("batch_size = 8", "batch_size = 4"))
    assert sweep.JobFiles(sweep.load(path), out, resume=True).done() == {}
    path.write_text(text)
    data = (tmp_path / "s" / "models" / "c.onnx").read_bytes()
    (tmp_path / "s" / "models" / "c.onnx").write_bytes(data + b"\0")  # no longer the model audited
    done = sweep.JobFiles(sweep.load(path), out, resume=True).done()
    assert sorted(plan.jobs[i].model.name for i in done) == ["a.onnx", "a.onnx", "b.onnx", "b.onnx"]


def test_out_and_resume_errors_are_one_line(tmp_path, run_cli):
    path = three_models(tmp_path / "s")
    p = run_cli("sweep", str(path), "--resume")
    assert p.returncode == 2 and "give --out DIR too" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        sweep.JobFiles(sweep.load(path), tmp_path / "file", resume=False)
