"""The documentation's promises: every option and metric documented, links that resolve, and CI jobs that work.

README.md is the user's path (under 300 lines); the reference is in docs/.
The qaudit command of the GitHub Actions and GitLab CI jobs (docs/ci.md) is run on
the bundled sample (in a temporary directory, so the outputs land there), as
is the command that refreshes the baseline, and the Python API example.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qaudit.cli.settings import OPTIONS
from qaudit.report import LayerRow, OutputRow

from .conftest import REPO, SAMPLE

DOCS = REPO / "docs"
#: the pages every relative link of which must resolve
LINKED_PAGES = [
    REPO / "README.md",
    *sorted(DOCS.glob("*.md")),
    REPO / "samples" / "README.md",
    REPO / "studies" / "README.md",
    REPO / "studies" / "init" / "RESULTS.md",
    REPO / "benchmarks" / "README.md",
]
#: options of the command line that are not settings (argparse only)
CLI_ONLY_FLAGS = {"--config", "--no-baseline", "--no-progress", "--debug", "--version"}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


README = read(REPO / "README.md")
CI_PAGE = read(DOCS / "ci.md")  # the CI jobs and the baseline refresh


def without_code(text: str) -> str:
    """``text`` with fenced code blocks blanked (same length), so that a ``# comment`` is no heading."""
    return re.sub(r"^```.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S | re.M)


def headings(text: str) -> list[tuple[int, str, int]]:
    """``(level, title, offset)`` of every Markdown heading outside code blocks."""
    return [
        (len(m.group(1)), m.group(2).strip(), m.start())
        for m in re.finditer(r"^(#{1,6}) (.+)$", without_code(text), flags=re.M)
    ]


def section(text: str, title: str) -> str:
    """From the heading ``title`` (e.g. ``"## Exit codes"``) to the next heading of the same or a higher level."""
    level, name = len(title.split(" ", 1)[0]), title.split(" ", 1)[1]
    hs = headings(text)
    (start,) = [off for lv, t, off in hs if lv == level and t == name]
    end = next((off for lv, _, off in hs if off > start and lv <= level), len(text))
    return text[start:end]


def code_blocks(text: str, lang: str = "") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row (header and separator rows included)."""
    rows = []
    for line in without_code(text).splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            rows.append([c.strip() for c in cells])
    return rows


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title, _ in headings(text):
        s = slug(title)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


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


# -------------------------------------------------------------- the README


def test_readme_is_the_short_path():
    n = README.count("\n")
    assert n < 300, f"README.md has {n} lines: move reference material to docs/"


def test_readme_links_every_docs_page():
    listed = set(re.findall(r"\]\((docs/[^)#\s]+\.md)\)", section(README, "## Documentation")))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= listed, f"not in the README's Documentation list: {sorted(pages - listed)}"


def test_readme_exit_codes():
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", section(README, "## Exit codes"), flags=re.M))
    assert sorted(rows) == ["0", "1", "2", "3"]
    assert "gate failed" in rows["1"] and "bug" in rows["3"] and "configuration" in rows["2"]


def test_readme_development_section_is_short():
    dev = section(README, "## Development")
    assert dev.count("\n") <= 16, "the Development section links docs/development.md for the details"
    assert "python -m pytest -q" in dev and "docs/development.md" in dev


# -------------------------------------------------------------- links


def _links(page: Path):
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", without_code(read(page))):
        target = m.group(1)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            yield target


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    assert not re.search(r"(?<![\w.])/(home|work|Users)/", read(page)), "no machine-specific absolute paths"
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if REPO not in dest.parents and dest != REPO:
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(read(dest)):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_tables_are_well_formed(page):
    """Every row of a table has the header's number of cells (a ``|`` inside a cell must be ``\\|``)."""
    text = without_code(read(page))
    for table in re.findall(r"(?:^\|.*\|[ \t]*\n?)+", text, flags=re.M):
        rows = table_rows(table)
        bad = [r[0] for r in rows if len(r) != len(rows[0])]
        assert not bad, f"{page.relative_to(REPO)}: rows with a cell count other than the header's: {bad}"


# -------------------------------------------------------------- options


def _option_page(option) -> Path:
    """The page whose table documents ``option``: the gates in docs/gates.md, the rest in docs/configuration.md."""
    return DOCS / ("gates.md" if option.section == "gates" else "configuration.md")


def test_every_option_is_documented():
    rows = {p: table_rows(read(p)) for p in (DOCS / "configuration.md", DOCS / "gates.md")}
    for o in OPTIONS:
        page = _option_page(o)
        row = [r for r in rows[page] if len(r) > 1 and f"`{o.name}`" in r[1]]
        assert row, f"{page.name}: no table row with the config key `{o.name}`"
        for flag in o.flags:
            assert f"`{flag}" in row[0][0], f"{page.name}: the row of `{o.name}` does not name {flag}"
    conf = read(DOCS / "configuration.md")
    for word in (
        "QAUDIT_CONFIG",
        "QAUDIT_KERNELS",
        "`--config PATH`",
        "`--no-baseline`",
        "[tool.qaudit]",
        "qaudit.toml",
    ):
        assert word in conf, word
    for flag in CLI_ONLY_FLAGS:
        assert f"`{flag}" in conf, flag


def test_documented_options_exist():
    known = {f for o in OPTIONS for f in o.flags} | CLI_ONLY_FLAGS
    for page in (DOCS / "configuration.md", DOCS / "gates.md"):
        for row in table_rows(read(page)):
            for flag in re.findall(r"`(--[a-z0-9-]+)", row[0]):
                assert flag in known, f"{page.name} documents {flag}, which qaudit does not have"


# -------------------------------------------------------------- metrics and JSON

#: row fields that are not metrics: documented in docs/json-format.md
STRUCTURAL = {"index", "name", "op_type", "tensor", "quant_tensor", "fused", "bn_folded"}


def test_every_report_field_is_documented():
    metrics, json_doc = read(DOCS / "metrics.md"), read(DOCS / "json-format.md")
    for cls in (LayerRow, OutputRow):
        for f in dataclasses.fields(cls):
            page, text = ("json-format.md", json_doc) if f.name in STRUCTURAL else ("metrics.md", metrics)
            assert f"`{f.name}`" in text, f"docs/{page} does not define {cls.__name__}.{f.name}"


def test_planned_metrics_are_not_reported_yet():
    planned = set(re.findall(r"`([a-z_0-9]+)`", section(read(DOCS / "metrics.md"), "## Planned")))
    reported = {f.name for cls in (LayerRow, OutputRow) for f in dataclasses.fields(cls)}
    for name in ("clip_error_share", "grid_use", "max_abs_error", "rel_error"):
        if name in planned:
            assert name not in reported, f"{name} is reported now: move it out of 'Planned' in docs/metrics.md"


def test_json_format_names_the_current_format():
    from qaudit.report import FORMAT_VERSION

    page = read(DOCS / "json-format.md")
    assert f"(format version {FORMAT_VERSION})" in page
    assert "| `gates` |" in page
    from qaudit.runs import RUNS_FORMAT_VERSION

    assert f"writes format {RUNS_FORMAT_VERSION}, [several runs](#several-runs)" in page


# -------------------------------------------------------------- Python API


def _api_example() -> str:
    (block,) = code_blocks(section(README, "## Python API"), "python")
    return block


def test_python_api_example_compiles():
    compile(_api_example(), "README.md", "exec")


# ------------------------------------------------------------------ CI


@pytest.fixture(scope="module")
def ci_command() -> str:
    blocks = code_blocks(section(CI_PAGE, "## The jobs"), "yaml")
    assert len(blocks) == 2, "expected the GitHub Actions and the GitLab CI job"
    github, gitlab = (qaudit_line(b) for b in blocks)
    assert github == gitlab, "both CI jobs must run the same qaudit command"
    return github


def test_readme_shows_the_ci_jobs_command(ci_command):
    (block,) = code_blocks(section(README, "## Use in CI"))
    assert block.strip() == ci_command


@pytest.mark.extra  # pyyaml (test extra)
def test_ci_jobs_are_valid_yaml_with_the_junit_report(ci_command):
    yaml = pytest.importorskip("yaml")
    github, gitlab = (yaml.safe_load(b) for b in code_blocks(section(CI_PAGE, "## The jobs"), "yaml"))
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
    block = code_blocks(section(CI_PAGE, "## Storing and refreshing the baseline"))[0]
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
