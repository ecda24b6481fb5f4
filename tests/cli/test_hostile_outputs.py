"""Hostile output paths (issue 16, items 10-11): an output never replaces an input, a device or a
pipe; every output is checked before any work; all outputs are written or none.

Each refusal is exit 2 with one line, and the whole ``tmp_path`` tree is byte-for-byte what it was.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest

from ..conftest import REPO, SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL
from .test_bad_input import assert_user_error, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture
def inputs(tmp_path):
    """Private copies of everything an audit reads: model with external data, data dirs, labels, config, baseline."""
    d = tmp_path / "in"
    d.mkdir()
    model = onnx.load(str(SAMPLE_MODEL))
    onnx.save_model(
        model,
        str(d / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.weights",
        size_threshold=0,
    )
    assert (d / "model.weights").stat().st_size > 1000
    shutil.copytree(SAMPLE_CALIB, d / "calib")
    shutil.copytree(SAMPLE_EVAL, d / "eval")
    shutil.copyfile(SAMPLE_LABELS, d / "labels.npy")
    (d / "qaudit.toml").write_text("quiet = true\n", encoding="utf-8")
    return d


def _audit(run_cli, d: Path, *extra, baseline: Path | None = None):
    args = [d / "model.onnx", "--calib", d / "calib", "--eval", d / "eval", "--labels", d / "labels.npy"]
    args += ["--config", d / "qaudit.toml"]
    if baseline is not None:
        args += ["--baseline", baseline]
    return run_cli(*args, *extra)


#: (flag, path relative to the inputs dir, words the error line must hold)
CLOBBERS = {
    "json-onto-calib-file": ("--json", "calib/batch_000.npy", ["calibration data", "inside"]),
    "html-new-file-in-calib-dir": ("--html", "calib/report.html", ["calibration data", "inside"]),
    "markdown-onto-eval-file": ("--markdown", "eval/batch_000.npy", ["evaluation data"]),
    "junit-onto-labels": ("--junit", "labels.npy", ["labels file"]),
    "json-onto-config": ("--json", "qaudit.toml", ["config file"]),
    "output-model-onto-external-data": ("--output-model", "model.weights", ["external-data file", "model.onnx"]),
    "json-onto-model": ("--json", "model.onnx", ["input model"]),
    "json-through-dotdot": ("--json", "calib/../labels.npy", ["labels file"]),
    "json-through-symlink": ("--json", "link-to-weights", ["external-data file"]),
}


@pytest.mark.parametrize("case", list(CLOBBERS))
def test_an_output_never_overwrites_an_input(case, run_cli, tmp_path, inputs):
    flag, rel, needles = CLOBBERS[case]
    (inputs / "link-to-weights").symlink_to("model.weights")
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    proc = _audit(run_cli, inputs, flag, inputs / rel)
    assert_user_error(proc, flag, "never", *needles)
    assert snapshot(tmp_path) == before
    assert time.perf_counter() - t0 < 30  # refused before any work


def test_an_output_never_overwrites_the_baseline(run_cli, tmp_path, inputs):
    base = inputs / "baseline.json"
    shutil.copyfile(REPO / "samples" / "digits" / "baseline.json", base)
    (tmp_path / "alias.json").symlink_to(base)
    before = snapshot(tmp_path)
    proc = _audit(run_cli, inputs, "--markdown", tmp_path / "alias.json", baseline=base)
    assert_user_error(proc, "--markdown", "baseline")
    assert snapshot(tmp_path) == before


def test_report_and_compare_outputs_never_overwrite_their_inputs(run_cli, tmp_path):
    saved = shutil.copyfile(REPO / "samples" / "digits" / "baseline.json", tmp_path / "saved.json")
    before = snapshot(tmp_path)
    assert_user_error(
        run_cli("report", saved, "--html", tmp_path / "x" / ".." / "saved.json"), "--html", "input report"
    )
    assert_user_error(run_cli("compare", saved, saved, "--json", saved), "--json", "input")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_an_output_that_is_a_directory_or_socket_is_refused(kind, run_cli, tmp_path):
    target = tmp_path / "target"
    if kind == "directory":
        target.mkdir()
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(target))
    try:
        before = snapshot(tmp_path)
        proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--html", target)
        assert_user_error(proc, "--html", kind)
        assert snapshot(tmp_path) == before
    finally:
        if kind == "socket":
            s.close()


@pytest.mark.parametrize("flag", ["--json", "--output-model"])
def test_a_fifo_output_is_written_into_not_replaced(flag, run_cli, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = {}

    def read():
        with open(fifo, "rb") as f:  # blocks until qaudit opens it for writing
            got["data"] = f.read()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", flag, fifo)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not a regular file put in its place
    reader.join(timeout=10)
    if flag == "--json":
        assert json.loads(got["data"])["format"]["name"] == "qaudit-report"
    else:
        assert {n.op_type for n in onnx.load_from_string(got["data"]).graph.node} >= {"QuantizeLinear"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]  # no temporary file left


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="no /dev/fd")
def test_a_file_descriptor_is_written_into(tmp_path, cli_env):
    """``--json /dev/fd/1`` with stdout a pipe, then a file: the JSON arrives, the file is not replaced.
    (Not ``/dev/stdout``: run as root, a regression would replace the machine's /dev/stdout; it did.)"""
    cmd = [sys.executable, "-m", "qaudit", SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--json", "/dev/fd/1"]
    proc = subprocess.run(list(map(str, cmd)), cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["format"]["name"] == "qaudit-report"
    out = tmp_path / "redirected.json"
    with open(out, "w") as f:
        inode = os.fstat(f.fileno()).st_ino
        proc = subprocess.run(list(map(str, cmd)), cwd=REPO, env=cli_env, stdout=f, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert os.stat(out).st_ino == inode  # written through the descriptor, not renamed over
    assert json.loads(out.read_text(encoding="utf-8"))["format"]["name"] == "qaudit-report"


# ------------------------------------------------ item 11: checked up front, all or none


def test_a_name_too_long_is_refused_before_the_audit(run_cli, tmp_path):
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    long = tmp_path / ("r" * 300 + ".md")
    proc = run_cli(SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--json", tmp_path / "r.json", "--markdown", long)
    assert_user_error(proc, "--markdown", "too long")
    assert snapshot(tmp_path) == before
    assert time.perf_counter() - t0 < 30


def test_an_unwritable_directory_is_refused_before_the_audit(run_cli, tmp_path):
    """sysfs refuses new files even to root; a read-only directory (below) is the same check."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys")
    before = snapshot(tmp_path)
    proc = run_cli(
        SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--json", tmp_path / "r.json", "--html", "/sys/kernel/r.html"
    )
    assert_user_error(proc, "--html", "/sys/kernel/r.html")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused_before_the_audit(run_cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        proc = run_cli(
            SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet", "--json", tmp_path / "r.json", "--html", ro / "r.html"
        )
        assert_user_error(proc, "--html", "permission denied")
        assert snapshot(tmp_path) == before
    finally:
        ro.chmod(0o755)


#: runs the CLI with a file-size limit that applies once the audit is done (the outputs alone hit it)
_LIMITED = """
import resource, sys
import qaudit.pipeline.audit as pa
audit = pa.audit
def limited(*a, **k):
    report = audit(*a, **k)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_LIMIT, SIZE_LIMIT))
    return report
pa.audit = limited
from qaudit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_size_limit_leaves_no_output_at_all(tmp_path, cli_env):
    """The HTML report exceeds RLIMIT_FSIZE: exit 2 with one line, and no JSON, Markdown,
    JUnit or model either (they fit), no partial file, no temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    limit = 40_000  # the JSON (~22 kB) and the model (~51 kB, written before the limit) fit; the HTML (~74 kB) not
    cmd = [sys.executable, "-c", _LIMITED.replace("SIZE_LIMIT", str(limit)), SAMPLE_MODEL, "--calib", SAMPLE_CALIB]
    for flag, name in (("--json", "r.json"), ("--markdown", "r.md"), ("--junit", "r.xml"), ("--html", "r.html")):
        cmd += [flag, out / name]
    cmd += ["--output-model", out / "q.onnx", "--quiet", "--min-layer-sqnr", "5"]
    proc = subprocess.run(list(map(str, cmd)), cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    assert_user_error(proc, "cannot write", "File too large", "nothing was written")
    assert list(out.iterdir()) == []


#: runs the CLI with a file-size limit set just before the quantized model is copied out
_LIMITED_MODEL = """
import resource, sys
import qaudit.pipeline.audit as pa
copy = pa.shutil.copyfile
def limited(src, dst, **k):
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
    return copy(src, dst, **k)
pa.shutil.copyfile = limited
from qaudit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_size_limit_on_the_output_model_leaves_nothing(tmp_path, cli_env):
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-c", _LIMITED_MODEL, SAMPLE_MODEL, "--calib", SAMPLE_CALIB, "--quiet"]
    cmd += ["--output-model", out / "q.onnx", "--json", out / "r.json"]
    proc = subprocess.run(list(map(str, cmd)), cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=300)
    line = assert_user_error(proc, "cannot write --output-model", "q.onnx", "File too large")
    assert ".qaudit-" not in line  # the user's path, not the temporary one
    assert list(out.iterdir()) == []
