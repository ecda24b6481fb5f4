"""The README's promises: every option documented, and the CI jobs' commands really work.

The qaudit command of the GitHub Actions and GitLab CI jobs is read from the
README and run on the bundled sample (in a temporary directory, so the outputs
land there), as is the command that refreshes the baseline.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qaudit.cli.settings import OPTIONS

from .conftest import REPO, SAMPLE

README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    nxt = re.search(r"\n#{1,3} ", README[start + len(title) + 2 :])
    return README[start : start + len(title) + 2 + (nxt.start() if nxt else len(README))]


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def qaudit_line(block: str) -> str:
    (line,) = [ln for ln in block.splitlines() if re.search(r"(^|\s)qaudit --", ln)]
    return re.sub(r"^\s*(- |run: )", "", line).strip()


def run_in(tmp_path: Path, cli_env: dict, command: str, **replace) -> subprocess.CompletedProcess:
    """Run a README command from ``tmp_path``: repository paths made absolute, ``replace`` applied to arguments."""
    args = shlex.split(command)
    assert args[0] == "qaudit"
    args = [replace.get(a, a) for a in args[1:]]
    args = [str(REPO / a) if a.startswith("samples/") else a for a in args]
    return subprocess.run(
        [sys.executable, "-m", "qaudit", *args], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------- options


def test_readme_documents_every_option():
    for o in OPTIONS:
        for flag in o.flags:
            assert f"`{flag}" in README, f"README does not document {flag}"
        assert f"`{o.name}`" in README, f"README does not name the config key {o.name}"
    for word in ("QAUDIT_CONFIG", "`--config PATH`", "`--no-baseline`", "[tool.qaudit]", "qaudit.toml", "`--debug`"):
        assert word in README, word


def test_readme_exit_codes():
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", section("## Exit codes"), flags=re.M))
    assert sorted(rows) == ["0", "1", "2", "3"]
    assert "gate failed" in rows["1"] and "bug" in rows["3"] and "configuration" in rows["2"]


def test_readme_json_table_names_the_current_format():
    from qaudit.report import FORMAT_VERSION

    assert f"(format version {FORMAT_VERSION})" in section("## JSON report")
    assert "| `gates` |" in section("## JSON report")


def test_python_api_example_compiles():
    (block,) = code_blocks(section("## Python API"), "python")
    compile(block, "README.md", "exec")


# ------------------------------------------------------------------ CI


@pytest.fixture(scope="module")
def ci_command() -> str:
    blocks = code_blocks(section("## Use in CI"), "yaml")
    assert len(blocks) == 2, "expected the GitHub Actions and the GitLab CI job"
    github, gitlab = (qaudit_line(b) for b in blocks)
    assert github == gitlab, "both CI jobs must run the same qaudit command"
    return github


@pytest.mark.extra  # pyyaml (test extra)
def test_ci_jobs_are_valid_yaml_with_the_junit_report(ci_command):
    yaml = pytest.importorskip("yaml")
    github, gitlab = (yaml.safe_load(b) for b in code_blocks(section("## Use in CI"), "yaml"))
    steps = github["jobs"]["qaudit"]["steps"]
    assert {"run": "pip install ."} in steps
    assert any(s.get("run") == ci_command for s in steps)
    junit_path = shlex.split(ci_command)[shlex.split(ci_command).index("--junit") + 1]
    assert any(s.get("with", {}).get("report_paths") == junit_path for s in steps)
    job = gitlab["quantization-gate"]
    assert job["script"] == ["pip install .", ci_command]
    assert job["artifacts"]["reports"]["junit"] == junit_path and job["artifacts"]["when"] == "always"


@pytest.mark.slow
def test_ci_command_gates_the_sample_and_passes(ci_command, tmp_path, cli_env):
    p = run_in(tmp_path, cli_env, ci_command)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    args = shlex.split(ci_command)
    out = {flag: tmp_path / args[args.index(flag) + 1] for flag in ("--json", "--junit", "--markdown")}
    report = json.loads(out["--json"].read_text(encoding="utf-8"))
    assert report["gates"]["passed"] is True
    assert report["gates"]["baseline"] is not None, "the sample config gates against the committed baseline"
    root = ET.parse(out["--junit"]).getroot()
    assert int(root.get("tests")) > 20 and root.get("failures") == "0"
    assert out["--markdown"].read_text(encoding="utf-8").startswith("## qaudit: ✅ PASS")
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(x.name for x in out.values())


@pytest.mark.slow
def test_baseline_refresh_command(tmp_path, cli_env):
    block = code_blocks(section("### Storing and refreshing the baseline"))[0]
    command = block.splitlines()[0]
    assert "--no-baseline" in command and "--json samples/digits/baseline.json" in command
    fresh = tmp_path / "baseline.json"  # never overwrite the committed baseline from a test
    p = run_in(tmp_path, cli_env, command, **{"samples/digits/baseline.json": str(fresh)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    new = json.loads(fresh.read_text(encoding="utf-8"))
    committed = json.loads((SAMPLE / "baseline.json").read_text(encoding="utf-8"))
    assert new["gates"]["baseline"] is None
    assert [r["name"] for r in new["layers"]] == [r["name"] for r in committed["layers"]]
    assert new["model"]["sha256"] == committed["model"]["sha256"], "the committed baseline is stale: refresh it"
    assert new["settings"] == committed["settings"]
