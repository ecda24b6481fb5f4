"""The gate-check sentence is written once (qaudit.renderers.checks) and every output uses it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from qaudit.renderers import render
from qaudit.renderers.checks import counts, sentence, words
from qaudit.report import GateCheck


def check(**kw) -> GateCheck:
    base = dict(gate="min_layer_sqnr", scope="layer", subject="/fc2/Gemm", metric="sqnr_db", comparison=">=")
    return GateCheck(**{**base, "threshold": 20.0, "measured": 18.25, "status": "fail", **kw})


def test_sentences():
    assert sentence(check(pattern="/fc2/*")) == "min_layer_sqnr /fc2/Gemm: sqnr_db 18.25 < 20 (glob '/fc2/*')"
    assert sentence(check(status="pass", measured=21.0)) == "min_layer_sqnr /fc2/Gemm: sqnr_db 21 >= 20"
    assert sentence(check(measured=19.99996)) == "min_layer_sqnr /fc2/Gemm: sqnr_db 19.99996 < 20"
    reg = check(gate="max_layer_sqnr_drop", comparison="<=", threshold=1.0, measured=2.5, baseline=30.0, value=27.5)
    assert sentence(reg) == "max_layer_sqnr_drop /fc2/Gemm: sqnr_db change 2.5 > 1 (baseline 30, now 27.5)"
    missing = check(measured=None, reason="sqnr_db is missing (null: no signal)")
    assert sentence(missing) == "min_layer_sqnr /fc2/Gemm: sqnr_db is missing (null: no signal)"
    assert words(missing).relation == "" and words(missing).measured == "-"
    nothing = check(subject="", measured=None, reason="nothing checked: no layer matches '/x*'")
    assert sentence(nothing) == "min_layer_sqnr (no layer): nothing checked: no layer matches '/x*'"
    off = check(threshold=None, status="skip", reason="gate off for 'input'")
    assert sentence(off) == "min_layer_sqnr /fc2/Gemm: gate off for 'input'" and words(off).relation == ""


def test_every_output_writes_the_same_words(edge):
    failures = edge.gates.failures
    assert len(failures) == 12
    # JUnit: the failure message is the sentence
    root = ET.fromstring(render(edge, "junit").split("\n", 1)[1])
    messages = [f.get("message") for f in root.iter("failure")]
    assert messages == [sentence(c) for c in failures]
    # terminal: the verdict line quotes the first sentences; the table has the words
    text = render(edge, "terminal", width=250)
    verdict = text.splitlines()[-1]
    assert verdict == f"FAIL: {counts(edge.gates)}: " + "; ".join(sentence(c) for c in failures[:3]) + "; ..."
    table = text.split("Failing gates", 1)[1]
    md = render(edge, "markdown").split("### Failing gates", 1)[1].split("###", 1)[0]
    for c in failures:
        w = words(c)
        row = next(line for line in table.splitlines() if f" {w.gate} " in line and f" {w.subject} " in line)
        cells = [x.strip() for x in row.strip("│ ").split("│")]
        assert cells[:6] == [w.gate, w.subject, w.metric, w.measured, w.relation, w.threshold]
        assert f"| {w.measured} | {w.relation} | {w.threshold} |" in md
    for c in edge.gates.skipped:
        assert f"skipped: {sentence(c)}" in text
