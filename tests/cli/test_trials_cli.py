"""--trials, --seed and --trial-fraction on the command line and in config files (issue 19 item 5):
the report carries the trials in every output, ``qaudit report`` re-renders them, bad values are one line."""

from __future__ import annotations

import json
import re

import pytest

from qaudit.cli.main import build_parser
from qaudit.cli.settings import resolve
from qaudit.report import load_report
from qaudit.trials import plan

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_LABELS, SAMPLE_MODEL
from .test_bad_input import assert_user_error


def _settings(tmp_path, *argv, env=None):
    args = vars(build_parser().parse_args([str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), *argv]))
    return resolve("audit", {k: v for k, v in args.items() if k not in ("debug", "no_progress")}, env or {}, tmp_path)


def test_flags_config_file_and_environment(tmp_path):
    cfg = _settings(tmp_path, "--trials", "5", "--seed", "3", "--trial-fraction", "0.75").audit_config()
    assert (cfg.trials, cfg.seed, cfg.trial_fraction) == (5, 3, 0.75)
    assert _settings(tmp_path).audit_config().trials == 0  # no trials by default
    (tmp_path / "qaudit.toml").write_text("trials = 4\nseed = 9\n")
    cfg = _settings(tmp_path).audit_config()
    assert (cfg.trials, cfg.seed, cfg.trial_fraction) == (4, 9, 0.5)
    assert _settings(tmp_path, env={"QAUDIT_TRIALS": "6"}).audit_config().trials == 6
    assert _settings(tmp_path, env={"QAUDIT_TRIALS": "0"}).audit_config().trials == 0  # 0: none, as the default


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trials", "1"], "trials from --trials: must be 0 (none) or >= 2"),
        (["--trials", "-3"], "trials from --trials: must be 0 (none) or >= 2"),
        (["--trials", "3", "--trial-fraction", "1"], "trial_fraction from --trial-fraction: must be in (0, 1)"),
        (["--trials", "3", "--trial-fraction", "0.1"], "less than 1 file"),
    ],
)
def test_trials_that_cannot_run_are_one_line_errors(run_cli, tmp_path, argv, message):
    out = tmp_path / "r.json"
    assert_user_error(run_cli(str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), *argv, "--json", str(out)), message)
    assert not out.exists()


@pytest.mark.slow
def test_every_output_shows_the_trials_and_report_rerenders_them(run_cli, tmp_path):
    j, md, html = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.html"
    args = ["--eval", str(SAMPLE_EVAL), "--labels", str(SAMPLE_LABELS), "--trials", "3", "--seed", "2"]
    p = run_cli(str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), *args, "--json", str(j), "--markdown", str(md),
                "--html", str(html), "--min-layer-sqnr", "20")  # fmt: skip
    assert p.returncode == 0, p.stderr
    d = json.loads(j.read_text())
    assert d["format"]["version"] == 5
    t = d["trials"]
    assert t["subsets"] == [list(s) for s in plan(t["files"], 3, 2).subsets]  # reproducible from the seed
    assert [c["subject"] for c in d["gates"]["checks"]] == [r["name"] for r in d["layers"] if r["sqnr_db"]]
    out = t["outputs"][0]["sqnr_db"]
    cell = f"{out['mean']:.1f} ± {out['std']:.1f} [{out['min']:.1f}, {out['max']:.1f}]"
    assert "SQNR trials" in p.stdout and "iso trials" in p.stdout and cell in p.stdout
    assert "calibration trials: 3 random subsets of 2 of 4 calibration files (seed 2" in p.stdout
    assert "### Calibration trials" in md.read_text() and cell.replace("[", "\\[").replace("]", "\\]") in md.read_text()
    page = html.read_text()
    bars = len(re.findall(r'<path class="bar"', page))
    assert bars == 2 * len(d["layers"])  # accumulated and isolated, every layer
    assert '<h2 id="trials">' in page and "batch_00" in page  # the files of each trial
    # qaudit report re-renders the trials from the JSON alone, and re-gates as the audit did
    p2 = run_cli("report", str(j), "--markdown", str(tmp_path / "again.md"), "--min-layer-sqnr", "20")
    assert p2.returncode == 0, p2.stderr
    assert cell in p2.stdout and (tmp_path / "again.md").read_text() == md.read_text()
    assert load_report(j).trials == t
