"""The initialization x architecture study (samples/init_study): its --quick run end to end.

Trains the quick subset (3 models, 1 epoch), exports and audits them, and checks
every number of the table against the JSON report it names, computed here
independently from the report (not with the study's own reader).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO, cli_env

pytest.importorskip("torch")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.slow

SCRIPT = REPO / "samples" / "init_study" / "study.py"
OUTPUT_KEYS = ("acc_fp32", "acc_int8", "qmse", "qce", "acc_drop_pct")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("init_study")
    out, work = tmp / "out", tmp / "work"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(work)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def _csv_rows(out):
    with open(out / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


def _num(cell: str):
    return None if cell == "" else float(cell)


def test_table_matches_reports(quick):
    out, _ = quick
    rows = _csv_rows(out)
    meta = json.loads((out / "study.json").read_text())
    assert [f"{r['arch']}__{r['init']}" for r in rows] == meta["models"]
    assert len(rows) == 3
    for r in rows:
        assert r["report"], f"{r['arch']} {r['init']}: no report ({r['trained']})"
        rep = json.loads((out / r["report"]).read_text())
        o = rep["outputs"][0]
        assert o["name"] == "logits"
        for k in OUTPUT_KEYS:
            assert _num(r[k]) == o[k], (r["arch"], r["init"], k)  # repr() round-trips floats exactly
        # the independent definitions: acc drop (thesis Eq. 4.11)
        assert math.isclose(o["acc_drop_pct"], abs(o["acc_fp32"] - o["acc_int8"]) / o["acc_fp32"] * 100, rel_tol=1e-9)
        # worst layer: the lowest finite accumulated SQNR over the quantized rows
        sq = [(l["sqnr_db"], l["name"]) for l in rep["layers"] if l["quant_tensor"] and l["sqnr_db"] is not None]
        worst = min(sq)
        assert _num(r["worst_sqnr_db"]) == worst[0]
        assert r["worst_layer"] == worst[1]
        assert _num(r["max_fold_w_range"]) == max(l["fold_w_range"] for l in rep["layers"] if l["fold_w_range"] is not None)
        # the trained flag follows the fp32 accuracy; failed models stay in the table
        assert (r["trained"] == "yes") == (o["acc_fp32"] >= 0.5)
        # the settings the study claims (RESULTS.md): 1 % clipping on each side, uint8 per-tensor
        s = rep["settings"]
        assert (s["percentile"], s["calib_symmetric"], s["clip_percentile"]) == (98.0, False, 1.0)
        assert (s["activation_type"], s["weight_type"], s["per_channel"]) == ("uint8", "uint8", False)
        assert rep["data"]["n_eval"] == 1000 and rep["data"]["n_calib"] == 500
        # BN kept unfolded in the export: qaudit folded every BN of the *_bn variants
        n_bn = len(rep["folding"]["folded"])
        assert (n_bn > 0) == r["arch"].endswith("_bn")
        assert not rep["folding"]["skipped"]


def test_markdown_table_is_the_csv(quick):
    out, stdout = quick
    rows = _csv_rows(out)
    md = [l for l in (out / "table.md").read_text().splitlines() if l.startswith("| ") and "---" not in l][1:]
    assert len(md) == len(rows)
    for line, r in zip(md, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == r["trained"]
        assert cells[3] == f"{100 * float(r['acc_fp32']):.2f}" and cells[4] == f"{100 * float(r['acc_int8']):.2f}"
        assert cells[5] == f"{float(r['qmse']):.3e}" and cells[6] == f"{float(r['qce']):.4f}"
        assert cells[7] == f"{float(r['acc_drop_pct']):.2f}" and cells[8] == f"{float(r['worst_sqnr_db']):.1f}"
        assert line in stdout  # the run prints the table it saves


def test_overlay_page(quick):
    out, _ = quick
    page = (out / "html" / "quick.html").read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype html>")
    assert 'id="alignment"' in page  # the compare machinery's alignment table heads the page
    for r in _csv_rows(out):
        assert f"{r['arch']}__{r['init']}" in page
