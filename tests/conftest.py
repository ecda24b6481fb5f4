"""Shared fixtures for the qaudit test suite.

* ``SAMPLE`` / ``sample``: the bundled digits sample (model, calib, eval, labels).
* ``cli_env``: that environment, for tests that start Python themselves.
* ``run_cli(*args)``: run ``python -m qaudit ARGS`` as a subprocess from the repo
  root, with a fixed terminal environment (no colour, 200 columns) and no
  ``QAUDIT_*`` variables.
* ``sample_run`` / ``sample_report_json``: ONE full audit of the sample (with
  --eval, --labels, --json and --html), shared by the whole session to keep the
  suite fast.
* ``sample_int8_report_json``: the same audit with int8 weights (overlay tests).

Markers (see docs/development.md): a test that needs more than a bare install
(``pip install . pytest``) says so with ``extra``, ``browser`` or ``realmodels``;
every other test gets the ``bare`` marker here. ``--bare`` runs those on an
installed qaudit and refuses an environment that is not bare. With ``CI`` set,
a test that ``pytest.importorskip`` would skip fails instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "digits"
SAMPLE_MODEL = SAMPLE / "model.onnx"
SAMPLE_CALIB = SAMPLE / "calib"
SAMPLE_EVAL = SAMPLE / "eval"
SAMPLE_LABELS = SAMPLE / "eval_labels.npy"

#: generous per-run limit (an audit of the sample takes ~1 s); a hang fails fast
CLI_TIMEOUT = 60


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cli_env() -> dict:
    # settings from the developer's shell must not leak into the runs (qaudit reads QAUDIT_*)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAUDIT_")}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    env.pop("FORCE_COLOR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _run(*args, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qaudit", *map(str, args)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def sample() -> Path:
    """The bundled digits sample directory."""
    assert SAMPLE_MODEL.is_file(), f"sample model missing: {SAMPLE_MODEL}"
    return SAMPLE


@pytest.fixture(scope="session", name="cli_env")
def cli_env_fixture() -> dict:
    """The environment ``run_cli`` uses, for tests that start Python themselves."""
    return cli_env()


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, timeout=...) -> CompletedProcess`` (text mode) of ``python -m qaudit``."""
    return _run


@dataclass(frozen=True)
class SampleRun:
    proc: subprocess.CompletedProcess
    json_path: Path
    html_path: Path
    report: dict
    model_sha_before: str
    model_sha_after: str


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory) -> SampleRun:
    """The one full audit of the sample (eval data, labels, JSON and HTML reports) that most tests read."""
    out = tmp_path_factory.mktemp("sample_report") / "report.json"
    html = out.with_name("report.html")
    before = sha256_file(SAMPLE_MODEL)
    proc = _run(
        SAMPLE_MODEL,
        "--calib",
        SAMPLE_CALIB,
        "--eval",
        SAMPLE_EVAL,
        "--labels",
        SAMPLE_LABELS,
        "--json",
        out,
        "--html",
        html,
    )
    assert proc.returncode == 0, f"sample audit failed ({proc.returncode}):\n{proc.stderr}"
    assert out.is_file(), "sample audit wrote no JSON report"
    assert html.is_file(), "sample audit wrote no HTML report"
    return SampleRun(proc, out, html, json.loads(out.read_text(encoding="utf-8")), before, sha256_file(SAMPLE_MODEL))


@pytest.fixture(scope="session")
def sample_report_json(sample_run) -> dict:
    """The parsed JSON report of the shared sample audit."""
    return sample_run.report


@pytest.fixture(scope="session")
def sample_int8_report_json(tmp_path_factory) -> dict:
    """The sample audited like ``sample_run`` but with int8 weights: the second report of overlays."""
    out = tmp_path_factory.mktemp("sample_int8") / "report.json"
    proc = _run(
        SAMPLE_MODEL,
        "--calib",
        SAMPLE_CALIB,
        "--eval",
        SAMPLE_EVAL,
        "--labels",
        SAMPLE_LABELS,
        "--weight-type",
        "int8",
        "--json",
        out,
        "--quiet",
    )
    assert proc.returncode == 0, f"int8 sample audit failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(out.read_text(encoding="utf-8"))


#: files tests saved for people to look at (screenshots); listed at the end of the run
_ARTIFACTS: list[Path] = []


@pytest.fixture(scope="session")
def artifacts() -> list[Path]:
    """Append a saved artifact's path; it is listed in pytest's closing summary."""
    return _ARTIFACTS


def pytest_terminal_summary(terminalreporter):
    for p in _ARTIFACTS:
        terminalreporter.write_line(f"artifact: {p}")


# ------------------------------------------------------------------ markers: the bare run

#: markers of tests that need more than ``pip install . pytest``. Every other test
#: is ``bare``: a test is bare unless it says otherwise, so a forgotten marker makes
#: the bare run fail (ImportError) instead of silently leaving the test out.
NOT_BARE = ("extra", "browser", "realmodels")


def pytest_addoption(parser):
    parser.addoption(
        "--bare",
        action="store_true",
        help="run the bare tests (-m bare) against an installed, non-editable qaudit in an environment "
        "without any of its extras, from a copy of the tree without qaudit/ (what .ci/run does)",
    )
    parser.addoption(
        "--realmodels-full",
        action="store_true",
        help="tests/test_realmodels.py: audit every real model (the table of docs/real-models.md), not only "
        "the CI set (also QAUDIT_REALMODELS_FULL=1)",
    )


def pytest_configure(config):
    if config.getoption("--bare"):
        problems = _not_bare()
        if problems:
            raise pytest.UsageError("--bare: " + "; ".join(problems))
        expr = config.option.markexpr
        config.option.markexpr = f"bare and ({expr})" if expr else "bare"


def _not_bare() -> list[str]:
    """Why this is not a bare run of the installed package (empty when it is)."""
    problems = []
    if (REPO / "qaudit").exists():
        problems.append(
            f"{REPO / 'qaudit'} exists: the tests and the CLI runs they start would import the source "
            "tree; run from a copy of the tree without qaudit/"
        )
    try:
        dist = metadata.distribution("qaudit")
    except metadata.PackageNotFoundError:
        return [*problems, "qaudit is not installed: pip install . pytest"]
    import qaudit

    where = Path(qaudit.__file__).resolve().parent
    meta = Path(dist.locate_file("qaudit")).resolve()
    site = {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}
    if where.parent not in site or meta != where:
        problems.append(
            f"qaudit is imported from {where} (its metadata points to {meta}), not installed in "
            f"{' or '.join(map(str, sorted(site)))}"
        )
    requires = dist.requires or []
    core = {_dist_name(r) for r in requires if "extra ==" not in r}
    extras = {_dist_name(r) for r in requires if "extra ==" in r} - core - {"pytest"}
    present = sorted(n for n in extras if _installed(n))
    if present:
        problems.append(f"packages of qaudit's extras are installed ({', '.join(present)}): use a fresh venv")
    return problems


def _dist_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower()


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection reads the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("bare"):
            raise pytest.UsageError(f"{item.nodeid}: 'bare' is set by tests/conftest.py; mark what a test needs")
        if not any(item.get_closest_marker(m) for m in NOT_BARE):
            item.add_marker("bare")


# ------------------------------------------------------------------ CI: a missing module fails


def _fail_missing_module(report) -> None:
    """With CI set, turn a skip by ``pytest.importorskip`` into a failure (CI must install what tests need)."""
    if not (report.skipped and os.environ.get("CI") and isinstance(report.longrepr, tuple)):
        return
    reason = report.longrepr[2]
    if "could not import " in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"CI is set, so no skip for a missing module ({reason.removeprefix('Skipped: ')}): install "
            "the extra that brings it, or mark the test (extra, browser, realmodels) so the bare run leaves it out"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_missing_module(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_missing_module(outcome.get_result())
