"""A gate must not flap: the same model, data and settings give identical metrics.

The second run pins OpenBLAS to one thread while the shared sample audit uses
the machine's default, so this also catches sums whose order depends on the
number of cores (docs/ort-quirks.md #13). Identity is exact (``==`` on the
parsed JSON), not approximate; only ``meta.created``, ``meta.seconds`` and
``meta.phase_seconds`` may differ.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import REPO, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL

pytestmark = pytest.mark.slow


def without_clock(report: dict) -> dict:
    d = json.loads(json.dumps(report))
    for key in ("created", "seconds", "phase_seconds"):
        d["meta"].pop(key)
    return d


def test_two_runs_give_identical_metrics(sample_run, cli_env, tmp_path):
    out = tmp_path / "again.json"
    env = {**cli_env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "qaudit",
            str(SAMPLE_MODEL),
            "--calib",
            str(SAMPLE_CALIB),
            "--eval",
            str(SAMPLE_EVAL),
            "--labels",
            str(SAMPLE_LABELS),
            "--json",
            str(out),
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    again = json.loads(out.read_text(encoding="utf-8"))
    first = without_clock(sample_run.report)
    second = without_clock(again)
    # layers and outputs first, for a readable diff on failure; then everything
    assert second["layers"] == first["layers"]
    assert second["outputs"] == first["outputs"]
    assert second == first
