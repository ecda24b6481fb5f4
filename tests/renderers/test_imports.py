"""Renderers never import onnx or onnxruntime: saved reports render where neither is installed.

Checked in a clean interpreter (a subprocess): after importing each module of
``qaudit/renderers/`` (found on disk, so a new module is checked without
editing this test), and ``qaudit.gate`` / ``qaudit.report`` / ``qaudit.remedy.causes`` / ``qaudit.remedy.fixreport``, ``sys.modules``
holds no onnx, no onnxruntime and no ``qaudit.pipeline`` module. Then every
format renders every subject it accepts from the committed JSON, and still
none is imported.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import qaudit
import qaudit.renderers

from ..conftest import REPO, cli_env

#: the package under test: this checkout, or the installed wheel in the bare run
RENDERERS_DIR = Path(qaudit.renderers.__file__).resolve().parent
DATA = Path(__file__).resolve().parent / "data"
#: what a renderer must never pull in, by top-level name or prefix
FORBIDDEN = ("onnx", "onnxruntime", "qaudit.pipeline")

MODULES = [
    "qaudit.report",
    "qaudit.gate",
    "qaudit.runs",
    "qaudit.remedy.causes",
    "qaudit.remedy.fixreport",
    "qaudit.renderers",
    *sorted(f"qaudit.renderers.{m.name}" for m in pkgutil.iter_modules([str(RENDERERS_DIR)])),
]

_IMPORT_EACH = r"""
import importlib, json, sys
FORBIDDEN = tuple(sys.argv[1].split(","))
def heavy():
    return sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
out = {"before": heavy(), "after": {}}
for name in sys.argv[2:]:
    importlib.import_module(name)
    out["after"][name] = heavy()
import qaudit
out["qaudit"] = qaudit.__file__
print(json.dumps(out))
"""

_RENDER_ALL = r"""
import json, sys
from pathlib import Path
from qaudit.comparison.run import compare_reports
from qaudit.renderers import FORMATS, get_renderer, render
from qaudit.report import from_json
data = Path(sys.argv[2])
a = from_json((data / "digits.json").read_text(encoding="utf-8"))
b = from_json((data / "edge.json").read_text(encoding="utf-8"))
from qaudit.runs import MultiReport
subjects = {"report": b, "reports": [("a", a), ("b", b)], "comparison": compare_reports([a, b]),
            "runs": MultiReport((("a", a), ("b", b)))}
done = []
for fmt in FORMATS:
    for kind in sorted(get_renderer(fmt).subjects):
        assert render(subjects[kind], fmt)
        done.append(f"{fmt}:{kind}")
FORBIDDEN = tuple(sys.argv[1].split(","))
print(json.dumps({"done": done, "heavy": sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))}))
"""


def _python(code: str, *args: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", code, ",".join(FORBIDDEN), *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_the_module_list_is_found_on_disk():
    known = "base checks compare_html html jsonreport junit markdown numbers svgplot terminal".split()
    assert {f"qaudit.renderers.{m}" for m in known} <= set(MODULES)


def test_importing_any_renderer_module_imports_no_onnx():
    out = _python(_IMPORT_EACH, *MODULES)
    # the subprocess imports the qaudit this test process tests (the checkout, or the installed wheel)
    assert Path(out["qaudit"]).resolve() == Path(qaudit.__file__).resolve(), out["qaudit"]
    assert out["before"] == []
    first = next(((name, mods) for name, mods in out["after"].items() if mods), None)
    assert first is None, f"importing {first[0]} (modules in this order: {MODULES}) pulls in {first[1][:5]}"
    assert list(out["after"]) == MODULES


def test_rendering_every_format_imports_no_onnx():
    out = _python(_RENDER_ALL, str(DATA))
    assert out["heavy"] == []
    assert len(out["done"]) == 14  # terminal 3, json 3, markdown 2, junit 2, html 4


@pytest.mark.parametrize("module, loaded", [("qaudit.renderers", ["qaudit.renderers.base"]), ("qaudit.gate", [])])
def test_the_registry_is_cheap_to_import(module, loaded):
    """The package (re-exported by qaudit) loads a renderer, and rich, only when a format is used."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'rich' or m.startswith(('rich.', 'qaudit.renderers.')))))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == loaded
