"""Fixtures of the renderer tests: the committed reports, and golden files.

* ``digits`` / ``edge`` / ``comparison``: rendered subjects read from the committed
  JSON in ``tests/renderers/data`` (see ``data/make_data.py``), so every test and
  golden file is the same on every machine: no model is run.
* ``golden(name, text)``: compare ``text`` with ``tests/renderers/golden/<name>``;
  a mismatch fails with a unified diff. Refresh every golden file with::

      python -m pytest tests/renderers --update-goldens

  then review the change with ``git diff tests/renderers/golden``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from qaudit.comparison.run import compare_reports
from qaudit.report import from_json

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
GOLDEN = HERE / "golden"
#: lines of diff shown when a golden file does not match
MAX_DIFF_LINES = 80


def pytest_addoption(parser):
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/renderers/golden/* from the current renderers instead of comparing with them",
    )


def _read(name: str):
    return from_json((DATA / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def digits():
    """The digits sample's audit (a copy of samples/digits/baseline.json): gates pass."""
    return _read("digits.json")


@pytest.fixture(scope="session")
def edge():
    """The edge cases: failing/skipped gates against a baseline, missing metrics, +inf SQNR, odd names."""
    return _read("edge.json")


@pytest.fixture(scope="session")
def comparison(digits, edge):
    """``digits`` compared with ``edge`` (what ``qaudit compare`` does with saved reports)."""
    return compare_reports([digits, edge], labels=["digits", "edge"])


@pytest.fixture(scope="session")
def comparison3(digits, edge):
    """Three models: one table per layer, with deltas."""
    return compare_reports([digits, edge, digits], labels=["digits", "edge", "again"])


@pytest.fixture
def golden(request):
    """``golden(name, text)``: assert ``text`` equals the golden file ``name`` (or rewrite it with --update-goldens)."""
    update = request.config.getoption("update_goldens", default=False)

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            return
        if not path.is_file():
            pytest.fail(f"golden file {path.name} is missing: run python -m pytest tests/renderers --update-goldens")
        want = path.read_text(encoding="utf-8")
        if text != want:
            diff = list(
                difflib.unified_diff(
                    want.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"golden/{name}",
                    "rendered now",
                )
            )
            shown = "".join(diff[:MAX_DIFF_LINES]) + (
                f"... {len(diff) - MAX_DIFF_LINES} more diff lines\n" if len(diff) > MAX_DIFF_LINES else ""
            )
            pytest.fail(
                f"{name} differs from its golden file (a deliberate change? refresh with "
                f"python -m pytest tests/renderers --update-goldens and review git diff):\n{shown}",
                pytrace=False,
            )

    return check
