"""SIGTERM and SIGHUP are handled like Ctrl-C (issue 16, item 12): one line on stderr, every
temporary file and directory removed, exit 128 + the signal number, no output written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ..conftest import REPO, SAMPLE_CALIB, SAMPLE_MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slow_calib(tmp_path_factory):
    """32,000 samples: an audit of the sample model takes seconds, long enough to be interrupted."""
    d = tmp_path_factory.mktemp("slow_calib")
    a = np.load(SAMPLE_CALIB / "batch_000.npy")
    np.save(d / "batch_000.npy", np.tile(a, (1000, 1, 1, 1)))
    return d


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGTERM, 143, "qaudit: terminated by SIGTERM; temporary files removed"),
        (signal.SIGHUP, 129, "qaudit: terminated by SIGHUP; temporary files removed"),
        (signal.SIGINT, 130, "qaudit: interrupted"),
    ],
)
def test_a_signal_mid_run_cleans_up(signum, code, line, slow_calib, tmp_path, cli_env):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    env = {**cli_env, "TMPDIR": str(tmpdir)}
    cmd = [sys.executable, "-m", "qaudit", SAMPLE_MODEL, "--calib", slow_calib, "--quiet"]
    cmd += ["--json", out / "r.json", "--output-model", out / "q.onnx"]
    # SIGINT at its default in the child: a shell without job control starts a background pytest with
    # SIGINT ignored, and an ignored SIGINT is inherited (Python then installs no KeyboardInterrupt)
    proc = subprocess.Popen(
        list(map(str, cmd)),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        # the audit has started when its private copy of the model is in TMPDIR
        while not any(tmpdir.glob("qaudit-*/*.onnx")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the audit never started"
            time.sleep(0.05)
        time.sleep(0.5)  # calibrating
        assert proc.poll() is None, "the audit finished before the signal: make the data larger"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert stderr == line + "\n"
    assert stdout == ""
    # no copy of the model, no augmented model, nothing of qaudit's; ".ses" is onnxruntime's own
    # (its import writes $TMPDIR/.ses, onnxruntime 1.32: docs/ort-quirks.md)
    assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []
    assert list(out.iterdir()) == []  # no report, no staged model
