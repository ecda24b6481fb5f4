"""The multi-run report (qaudit.runs) in every renderer: goldens for 2 and 3 runs, JUnit validity, the JSON round trip.

The runs are the committed reports of tests/renderers/data under run names (no model is run).
"""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET

import pytest

from qaudit.errors import ConfigError
from qaudit.renderers import render
from qaudit.report import ReportFormatError, to_dict
from qaudit.runs import MultiReport, as_runs, read, runs_to_json

from .test_golden import WIDTH, skeleton


@pytest.fixture
def runs2(digits, edge):
    return MultiReport((("percentile", digits), ("entropy", edge)))


@pytest.fixture
def runs3(digits, edge):
    return MultiReport((("percentile", digits), ("entropy", edge), ("minmax", digits)))


@pytest.mark.parametrize("name", ["runs2", "runs3"])
def test_goldens(golden, request, name):
    mr = request.getfixturevalue(name)
    golden(f"{name}.terminal.txt", render(mr, "terminal", width=WIDTH))
    golden(f"{name}.md", render(mr, "markdown"))
    golden(f"{name}.junit.xml", render(mr, "junit"))
    golden(f"{name}.html.txt", skeleton(render(mr, "html", worst=2)))


def test_verdict_names_the_failing_runs(runs3):
    text = render(runs3, "terminal", width=WIDTH, quiet=True).splitlines()
    # edge.json's gates fail, digits.json's pass
    assert text[-1] == "gates: FAIL (runs failing: entropy; passing: percentile, minmax)"
    assert [line.split(":")[0] for line in text[:-1]] == ["run percentile", "run entropy", "run minmax"]
    assert runs3.failed_runs == ("entropy",) and not runs3.passed
    md = render(runs3, "markdown")
    assert md.startswith("## qaudit: ❌ FAIL — runs failing: entropy; passing: percentile, minmax\n")
    assert md.count("\n### run `") == 3


def test_junit_is_valid_with_a_suite_per_run_and_gate(runs3, digits, edge):
    root = ET.fromstring(render(runs3, "junit"))
    suites = root.findall("testsuite")
    n_gates = [len({c.gate for c in r.gates.checks}) for r in (digits, edge)]
    assert len(suites) == 2 * n_gates[0] + n_gates[1]
    assert {s.get("name").split(".")[1] for s in suites} == {"percentile", "entropy", "minmax"}
    n_checks = 2 * len(digits.gates.checks) + len(edge.gates.checks)
    assert int(root.get("tests")) == n_checks == sum(int(s.get("tests")) for s in suites)
    assert int(root.get("failures")) == len(edge.gates.failures) == len(root.findall(".//failure"))
    for s in suites:
        props = {p.get("name"): p.get("value") for p in s.iter("property")}
        assert props["run"] == s.get("name").split(".")[1]
        assert all(c.get("classname") == s.get("name") for c in s.findall("testcase"))


def test_json_round_trip(runs3, tmp_path):
    text = render(runs3, "json")
    doc = json.loads(text)
    assert doc["format"] == {"name": "qaudit-report", "version": 4}
    assert [r["name"] for r in doc["runs"]] == ["percentile", "entropy", "minmax"]
    assert doc["gates"] == {"passed": False, "failed_runs": ["entropy"]}
    # each run's body is the single report's JSON, its name added
    single = to_dict(runs3.run("entropy"))
    single.pop("format")
    assert doc["runs"][1] == {"name": "entropy", **single}
    back = read(doc, strict=True)
    assert isinstance(back, MultiReport) and back.names == runs3.names
    assert runs_to_json(back) == text
    from qaudit.report import load_report

    (tmp_path / "r.json").write_text(text)
    assert runs_to_json(load_report(tmp_path / "r.json")) == text


def test_a_version_3_report_reads_as_one_run(data_dir, digits):
    saved = json.loads((data_dir / "digits.json").read_text())
    assert saved["format"]["version"] == 5
    single = read(saved)
    mr = as_runs(single)
    assert mr.names == (digits.settings["calibrate_method"],) == ("percentile",)
    assert mr.run("percentile") == digits == single


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(runs=[]), "runs must be a non-empty array"),
        (lambda d: d["runs"][1].update(name="percentile"), "runs[1].name 'percentile' is repeated"),
        (lambda d: d["runs"][0].pop("name"), "runs[0].name must be a non-empty string"),
        (lambda d: d["runs"][1].pop("layers"), "runs[1] (entropy): the report has no 'layers'"),
        (lambda d: d["runs"][0]["settings"].update(per_channel="yes"), "settings.per_channel must be true/false"),
    ],
)
def test_a_malformed_multi_run_document_names_the_field(runs2, change, message):
    doc = json.loads(render(runs2, "json"))
    change(doc)
    with pytest.raises(ReportFormatError, match=re.escape(message)):
        read(doc, strict=True)


def test_gates_argument_is_refused_for_runs(runs2, digits):
    with pytest.raises(ConfigError, match="each run carries its own"):
        render(runs2, "json", gates=digits.gates)


def test_runs_of_one_name_are_refused(digits):
    with pytest.raises(ValueError, match="unique"):
        MultiReport((("a", digits), ("a", dataclasses.replace(digits))))
