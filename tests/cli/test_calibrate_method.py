"""--calibrate-method and its options on the command line and in config files (issue 18 item 1)."""

from __future__ import annotations

import json

import pytest

from qaudit.cli.main import build_parser
from qaudit.cli.settings import resolve

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_MODEL


def _settings(tmp_path, *argv, env=None):
    args = vars(build_parser().parse_args([str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), *argv]))
    return resolve("audit", {k: v for k, v in args.items() if k not in ("debug", "no_progress")}, env or {}, tmp_path)


def test_flags_reach_the_quant_config(tmp_path):
    q = _settings(tmp_path, "--calibrate-method", "minmax", "--moving-average", "--averaging-constant", "0.1")
    q = q.audit_config().quant
    assert (q.calibrate_method, q.moving_average, q.averaging_constant) == ("minmax", True, 0.1)
    assert q.calibration() == {"calib_symmetric": False, "moving_average": True, "averaging_constant": 0.1}
    q = _settings(tmp_path, "--calibrate-method", "entropy", "--num-bins", "512", "--num-quantized-bins", "64")
    assert q.audit_config().quant.calibration() == {"num_bins": 512, "num_quantized_bins": 64}


def test_config_file_and_environment(tmp_path):
    (tmp_path / "qaudit.toml").write_text('calibrate_method = "distribution"\nnum_bins = 1024\n')
    q = _settings(tmp_path).audit_config().quant
    assert q.calibration() == {"num_bins": 1024}
    q = _settings(tmp_path, env={"QAUDIT_CALIBRATE_METHOD": "entropy"}).audit_config().quant
    assert q.calibration() == {"num_bins": 1024, "num_quantized_bins": 128}


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--calibrate-method", "minmax", "--percentile", "99.9"],
            "percentile does not apply to minmax calibration (only to percentile)",
        ),
        (["--calibrate-method", "entropy", "--calib-symmetric"], "calib_symmetric does not apply to entropy"),
        (["--moving-average"], "moving_average does not apply to percentile calibration (only to minmax)"),
        (["--calibrate-method", "percentile,entropy,percentile"], "lists percentile twice"),
        (["--calibrate-method", "entropy,minmax", "--percentile", "99.9"], "percentile applies to none of the methods"),
        (["--calibrate-method", "kl"], "must be one of percentile, minmax, entropy, distribution"),
    ],
)
def test_bad_combinations_are_one_line_errors(run_cli, tmp_path, argv, message):
    p = run_cli(str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), *argv, "--json", str(tmp_path / "r.json"))
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_audit_with_entropy_records_its_options(run_cli, tmp_path):
    out = tmp_path / "r.json"
    p = run_cli(
        str(SAMPLE_MODEL),
        "--calib",
        str(SAMPLE_CALIB),
        "--eval",
        str(SAMPLE_EVAL),
        "--calibrate-method",
        "entropy",
        "--num-bins",
        "512",
        "--json",
        str(out),
    )
    assert p.returncode == 0, p.stderr
    s = json.loads(out.read_text())["settings"]
    assert (s["calibrate_method"], s["num_bins"], s["num_quantized_bins"]) == ("entropy", 512, 128)
    assert s["percentile"] is None and s["calib_symmetric"] is None and s["moving_average"] is None
    assert "entropy (512 bins, 128 quantized bins) on 128 calibration samples" in p.stdout


@pytest.mark.parametrize("value", ['"percentile, entropy,minmax"', '["percentile", "entropy", "minmax"]'])
def test_config_file_method_list_as_a_string_or_a_toml_list(tmp_path, value):
    (tmp_path / "qaudit.toml").write_text(f"calibrate_method = {value}\nnum_bins = 512\n")
    cfg = _settings(tmp_path).audit_config()
    assert [(q.calibrate_method, q.calibration().get("num_bins")) for q in cfg.runs] == [
        ("percentile", 512),
        ("entropy", 512),
        ("minmax", None),
    ]
    one = _settings(tmp_path, "--calibrate-method", "entropy").audit_config()  # the flag replaces the list
    assert one.runs == () and one.quant.calibrate_method == "entropy"


@pytest.mark.parametrize(
    "value, message",
    [
        (
            '["percentile", "kl"]',
            "calibrate_method in the top level of {}: must be one of percentile, minmax, entropy, distribution",
        ),
        ('["percentile", 3]', "calibrate_method in the top level of {} must be a string or a non-empty list of names"),
        ("[]", "calibrate_method in the top level of {} must be a string or a non-empty list of names"),
        ('["entropy", "entropy"]', "calibrate_method in the top level of {}: lists entropy twice"),
        ('["entropy,minmax"]', "calibrate_method in the top level of {} must be a string or a non-empty list of names"),
        ("3", "calibrate_method in the top level of {} must be a string or a list of strings, not 3"),
    ],
)
def test_config_file_bad_method_list_is_a_one_line_error(run_cli, tmp_path, value, message):
    config = tmp_path / "q.toml"
    config.write_text(f"calibrate_method = {value}\n")
    p = run_cli(str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), "--config", str(config))
    assert p.returncode == 2, p.stderr
    assert message.format(config) in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
