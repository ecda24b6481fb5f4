"""Configuration sources and precedence (qaudit.cli.settings), in-process.

Every test resolves settings with its own working directory (``tmp_path``)
and its own environment dict, so nothing depends on the machine it runs on.
Precedence under test: defaults < config file < environment < command line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qaudit.cli.main import build_parser, build_report_parser
from qaudit.cli.settings import OPTIONS, resolve
from qaudit.errors import ConfigError
from qaudit.gate import Threshold


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def cli_args(*argv, command="audit") -> dict:
    """What the CLI hands to resolve() for ``argv``: only options that were typed."""
    from qaudit.cli.settings import OPTIONS_BY_NAME

    parser = build_parser() if command == "audit" else build_report_parser()
    ns = vars(parser.parse_args(list(argv)))
    return {k: v for k, v in ns.items() if k in OPTIONS_BY_NAME or k == "config"}


def audit(tmp_path, *argv, env=None):
    return resolve("audit", cli_args(*argv), env or {}, tmp_path)


# ------------------------------------------------------------- precedence


def test_defaults(tmp_path):
    s = audit(tmp_path)
    assert s.config_file is None
    assert s["percentile"] is None and s["batch_size"] is None and s["format"] == "qdq"  # None: automatic
    assert s["calib_symmetric"] is None and s["per_channel"] is False and s["exclude"] == ()
    # calibration options: None is the method's default (ORT's), resolved by QuantConfig
    assert s["calibrate_method"] == "percentile" and s["num_bins"] is None
    assert s["baseline"] is None and s["quiet"] is False
    assert set(s.sources.values()) == {"default"}
    assert not s.gates.configured()
    assert s.gates.threshold("max_layer_sqnr_drop") == Threshold(1.0)  # applies only with a baseline


@pytest.mark.parametrize(
    "file, env, cli, expected, source",
    [
        (None, None, None, None, "default"),  # the method's default: QuantConfig.calibration()
        (99.9, None, None, 99.9, "pyproject.toml [tool.qaudit]"),
        (99.9, "99.5", None, 99.5, "QAUDIT_PERCENTILE"),
        (99.9, "99.5", "99.0", 99.0, "--percentile"),
        (None, None, "99.0", 99.0, "--percentile"),
        (99.9, None, "99.0", 99.0, "--percentile"),
        (None, "99.5", None, 99.5, "QAUDIT_PERCENTILE"),
    ],
)
def test_precedence_defaults_file_env_cli(tmp_path, file, env, cli, expected, source):
    if file is not None:
        write(tmp_path / "pyproject.toml", f"[project]\nname = 'x'\n\n[tool.qaudit]\npercentile = {file}\n")
    s = audit(tmp_path, *(["--percentile", cli] if cli else []), env={"QAUDIT_PERCENTILE": env} if env else {})
    assert s["percentile"] == expected
    assert s.sources["percentile"] == source


def test_gate_entries_merge_across_sources(tmp_path):
    write(
        tmp_path / "qaudit.toml",
        """
[gates]
min_layer_sqnr = 25
max_qce = 0.1

[gates.layers."/fc2/*"]
min_layer_sqnr = 20

[gates.layers."input"]
min_layer_sqnr = 40
""",
    )
    env = {"QAUDIT_MIN_LAYER_SQNR": "27, input=off"}
    s = audit(tmp_path, "--min-layer-sqnr", "30", "--min-layer-sqnr", "/fc1/*=22", env=env)
    # CLI default 30 beats env 27 beats file 25; each glob entry is kept from the highest source that set it
    assert s.gates.threshold("min_layer_sqnr") == Threshold(30.0, {"/fc2/*": 20.0, "input": None, "/fc1/*": 22.0})
    assert s.gates.threshold("max_qce") == Threshold(0.1)
    assert s.sources["min_layer_sqnr"] == "--min-layer-sqnr"
    assert s.sources["max_qce"] == "qaudit.toml"
    assert s.gates.configured()


def test_off_turns_off_a_default_from_a_lower_source(tmp_path):
    write(tmp_path / "qaudit.toml", '[gates]\nmin_layer_sqnr = 25\n[gates.layers."/fc2/*"]\nmin_layer_sqnr = 20\n')
    s = audit(tmp_path, "--min-layer-sqnr", "off")
    assert s.gates.threshold("min_layer_sqnr") == Threshold(None, {"/fc2/*": 20.0})
    s = audit(tmp_path, "--max-layer-sqnr-drop", "off", "--min-layer-sqnr", "off,/fc2/*=off")
    assert not s.gates.threshold("min_layer_sqnr").active
    assert not s.gates.threshold("max_layer_sqnr_drop").active


def test_comma_separated_items_on_the_command_line(tmp_path):
    s = audit(tmp_path, "--min-layer-sqnr", "25,/fc2/*=20", "--min-layer-sqnr", "input=off")
    assert s.gates.threshold("min_layer_sqnr") == Threshold(25.0, {"/fc2/*": 20.0, "input": None})


def test_booleans_both_ways(tmp_path):
    write(tmp_path / "qaudit.toml", "per_channel = true\ncalib_symmetric = false\nquiet = true\n")
    s = audit(tmp_path)
    assert (s["per_channel"], s["calib_symmetric"], s["quiet"]) == (True, False, True)
    s = audit(tmp_path, "--no-per-channel", "--calib-symmetric", "--no-quiet")
    assert (s["per_channel"], s["calib_symmetric"], s["quiet"]) == (False, True, False)
    s = audit(tmp_path, env={"QAUDIT_PER_CHANNEL": "no", "QAUDIT_QUIET": "0"})
    assert (s["per_channel"], s["quiet"]) == (False, False)
    assert audit(tmp_path, "--calib-asymmetric")["calib_symmetric"] is False  # the original flag


def test_no_baseline_overrides_file_and_env(tmp_path):
    write(tmp_path / "qaudit.toml", 'baseline = "prev.json"\n')
    assert audit(tmp_path)["baseline"] == "prev.json"
    assert audit(tmp_path, env={"QAUDIT_BASELINE": "other.json"})["baseline"] == "other.json"
    assert audit(tmp_path, "--no-baseline", env={"QAUDIT_BASELINE": "other.json"})["baseline"] is None


def test_empty_environment_variable_counts_as_unset(tmp_path):
    write(tmp_path / "qaudit.toml", "percentile = 99.9\n")
    assert audit(tmp_path, env={"QAUDIT_PERCENTILE": "  "})["percentile"] == 99.9


def test_environment_lists(tmp_path):
    s = audit(tmp_path, env={"QAUDIT_EXCLUDE": "/a/Conv, /b/Gemm"})
    assert s["exclude"] == ("/a/Conv", "/b/Gemm")


# ------------------------------------------------------------- the file


def test_qaudit_toml_beats_pyproject(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.qaudit]\npercentile = 99.9\n")
    write(tmp_path / "qaudit.toml", "percentile = 99.5\n")
    s = audit(tmp_path)
    assert s["percentile"] == 99.5 and s.config_file == Path("qaudit.toml")


def test_pyproject_without_a_qaudit_table_is_not_a_config(tmp_path):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n[tool.other]\nkey = 1\n")
    assert audit(tmp_path).config_file is None
    with pytest.raises(ConfigError, match=r"pyproject.toml has no \[tool.qaudit\] table \(from --config\)"):
        audit(tmp_path, "--config", "pyproject.toml")


def test_explicit_config_beats_environment_beats_discovery(tmp_path):
    write(tmp_path / "qaudit.toml", "percentile = 99.1\n")
    write(tmp_path / "env.toml", "percentile = 99.2\n")
    write(tmp_path / "cli.toml", "percentile = 99.3\n")
    assert audit(tmp_path)["percentile"] == 99.1
    assert audit(tmp_path, env={"QAUDIT_CONFIG": "env.toml"})["percentile"] == 99.2
    s = audit(tmp_path, "--config", "cli.toml", env={"QAUDIT_CONFIG": "env.toml"})
    assert s["percentile"] == 99.3 and s.config_file == Path("cli.toml")
    with pytest.raises(ConfigError, match="config file not found: nope.toml"):
        audit(tmp_path, "--config", "nope.toml")
    with pytest.raises(ConfigError, match="QAUDIT_CONFIG"):
        audit(tmp_path, env={"QAUDIT_CONFIG": "nope.toml"})


def test_paths_in_a_file_are_relative_to_the_file(tmp_path):
    write(
        tmp_path / "ci" / "qaudit.toml",
        f'model = "model.onnx"\ncalib = "../data/calib"\nlabels = "{(tmp_path / "abs.npy").as_posix()}"\n'
        'json = "-"\njunit = "out/junit.xml"\n',
    )
    s = audit(tmp_path, "--config", "ci/qaudit.toml")
    assert Path(s["model"]) == Path("ci/model.onnx")
    assert Path(s["calib"]) == Path("ci/../data/calib")
    assert Path(s["labels"]) == tmp_path / "abs.npy"
    assert s["json"] == "-"
    assert Path(s["junit"]) == Path("ci/out/junit.xml")
    # command-line and environment paths are relative to the working directory
    s = audit(tmp_path, "--config", "ci/qaudit.toml", "--calib", "mine", env={"QAUDIT_LABELS": "l.npy"})
    assert s["calib"] == "mine" and s["labels"] == "l.npy"


def test_audit_config_from_settings(tmp_path):
    write(tmp_path / "qaudit.toml", 'model = "m.onnx"\ncalib = "c"\nweight_type = "int8"\nexclude = ["/a"]\n')
    cfg = audit(tmp_path, "--per-channel", "--max-samples", "8").audit_config()
    assert cfg.model == Path("m.onnx") and cfg.calib == Path("c")
    assert cfg.quant.weight_type == "int8" and cfg.quant.per_channel and cfg.quant.exclude == ("/a",)
    assert cfg.max_samples == 8
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model: give MODEL.onnx, or set 'model' in a config file or QAUDIT_MODEL"):
        resolve("audit", {}, {}, tmp_path / "empty").audit_config()


def test_label_and_class_outputs_from_every_source(tmp_path):
    write(tmp_path / "qaudit.toml", 'model = "m.onnx"\ncalib = "c"\nclass_outputs = ["boxes", "face"]\n')
    cfg = audit(tmp_path).audit_config()
    assert cfg.class_outputs == ("boxes", "face") and cfg.label_output is None
    cfg = audit(tmp_path, env={"QAUDIT_CLASS_OUTPUTS": "a, b", "QAUDIT_LABEL_OUTPUT": "b"}).audit_config()
    assert cfg.class_outputs == ("a", "b") and cfg.label_output == "b"
    # one value per flag, comma-separated or repeated: the model after it stays the model
    cfg = audit(tmp_path, "--class-outputs", "p,q", "--class-outputs", "r", "other.onnx").audit_config()
    assert cfg.class_outputs == ("p", "q", "r") and cfg.model == Path("other.onnx")


def test_report_command_ignores_audit_settings_but_checks_every_key(tmp_path):
    write(tmp_path / "qaudit.toml", 'calib = "c"\npercentile = 99.0\njunit = "j.xml"\n[gates]\nmax_qce = 0.2\n')
    s = resolve("report", cli_args("r.json", command="report"), {"QAUDIT_PERCENTILE": "99.5"}, tmp_path)
    assert "percentile" not in s.values and "calib" not in s.values
    assert s["junit"] == "j.xml" and s.gates.threshold("max_qce") == Threshold(0.2)
    write(tmp_path / "qaudit.toml", "percentil = 99.0\n")
    with pytest.raises(ConfigError, match="percentil"):
        resolve("report", {}, {}, tmp_path)


# --------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "toml, words",
    [
        (
            "percentil = 99.9\n",
            ["unknown key 'percentil'", "the top level", "qaudit.toml", "did you mean 'percentile'"],
        ),
        (
            "[gates]\nmin_layer_sqrn = 25\n",
            ["unknown key 'min_layer_sqrn'", "[gates]", "did you mean 'min_layer_sqnr'"],
        ),
        ("min_layer_sqnr = 25\n", ["unknown key 'min_layer_sqnr'", "belongs in [gates]"]),
        ("[gates]\npercentile = 99.0\n", ["unknown key 'percentile'", "belongs at the top level"]),
        ('[gates.layers."/fc2/*"]\nmax_qce = 0.1\n', ["max_qce is an output gate", '[gates.outputs."/fc2/*"]']),
        (
            '[gates.outputs."logits"]\nmin_layer_sqnr = 3\n',
            ["min_layer_sqnr is a layer gate", '[gates.layers."logits"]'],
        ),
        ("[gate]\nmin_layer_sqnr = 25\n", ["unknown key 'gate'", "did you mean 'gates'"]),
        ("[gates.layers]\nmin_layer_sqnr = 25\n", ["'layers'", "tables keyed by glob"]),
        ('percentile = "high"\n', ["percentile", "must be a finite number", "'high'"]),
        ("percentile = 150\n", ["percentile", "(0, 100]", "150"]),
        ("percentile = nan\n", ["percentile", "finite"]),
        ("batch_size = 2.5\n", ["batch_size", "must be an integer"]),
        ("batch_size = 0\n", ["batch_size", ">= 1"]),
        ("per_channel = 1\n", ["per_channel", "true or false"]),
        ('format = "qdqq"\n', ["format", "qdq, qoperator", "'qdqq'"]),
        ('exclude = "/a"\n', ["exclude", "list of strings"]),
        ("[gates]\nmin_layer_sqnr = nan\n", ["min_layer_sqnr", "finite"]),
        ('[gates]\nmin_layer_sqnr = "abc"\n', ["min_layer_sqnr", "number or 'off'", "'abc'"]),
        ("[gates]\nmax_qce = -1\n", ["max_qce", ">= 0"]),
        ("[gates]\nmin_top1_agreement = 99\n", ["min_top1_agreement", "<= 1"]),
        ("[gates]\nskip_missing = 'yes'\n", ["skip_missing", "true or false"]),
        ('[gates.layers."/fc2/*"]\nmin_layer_sqnr = true\n', ["min_layer_sqnr", '[gates.layers."/fc2/*"]', "True"]),
        ("percentile = \n", ["cannot read config file", "qaudit.toml"]),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path, toml, words):
    write(tmp_path / "qaudit.toml", toml)
    with pytest.raises(ConfigError) as e:
        audit(tmp_path)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_errors_in_pyproject_name_the_tool_table(tmp_path):
    write(tmp_path / "pyproject.toml", "[tool.qaudit.gates]\nmin_layer_sqrn = 25\n")
    with pytest.raises(
        ConfigError, match=re.escape("unknown key 'min_layer_sqrn' in [tool.qaudit.gates] of pyproject.toml")
    ):
        audit(tmp_path)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"QAUDIT_PERCENTILE": "abc"}, ["percentile from QAUDIT_PERCENTILE", "'abc'"]),
        ({"QAUDIT_PERCENTILE": "inf"}, ["QAUDIT_PERCENTILE", "finite"]),
        ({"QAUDIT_BATCH_SIZE": "0"}, ["QAUDIT_BATCH_SIZE", ">= 1"]),
        ({"QAUDIT_PER_CHANNEL": "maybe"}, ["QAUDIT_PER_CHANNEL", "true/false"]),
        ({"QAUDIT_MIN_LAYER_SQNR": "/fc2/*=x"}, ["min_layer_sqnr from QAUDIT_MIN_LAYER_SQNR for '/fc2/*'", "'x'"]),
        ({"QAUDIT_MIN_LAYER_SQNR": "=20"}, ["QAUDIT_MIN_LAYER_SQNR", "no glob before '='"]),
        (
            {"QAUDIT_MIN_LAYER_SQRN": "25"},
            ["unknown environment variable QAUDIT_MIN_LAYER_SQRN", "QAUDIT_MIN_LAYER_SQNR"],
        ),
        ({"QAUDIT_FORMAT": "onnx"}, ["format from QAUDIT_FORMAT", "qdq, qoperator"]),
    ],
)
def test_environment_errors_name_the_variable(tmp_path, env, words):
    with pytest.raises(ConfigError) as e:
        audit(tmp_path, env=env)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--min-layer-sqnr", "abc"], ["min_layer_sqnr from --min-layer-sqnr", "'abc'"]),
        (["--min-layer-sqnr", "=20"], ["--min-layer-sqnr", "no glob"]),
        (["--min-layer-sqnr", "nan"], ["--min-layer-sqnr", "finite"]),
        (["--max-clip-fraction", "5"], ["max_clip_fraction", "<= 1"]),
        (["--percentile", "0"], ["percentile from --percentile", "(0, 100]"]),
        (["--clip-percentile", "50"], ["clip_percentile", "[0, 50)"]),
        (["--worst", "-1"], ["worst", ">= 0"]),
    ],
)
def test_command_line_errors_name_the_flag(tmp_path, argv, words):
    with pytest.raises(ConfigError) as e:
        audit(tmp_path, *argv)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# ------------------------------------------------------ the option table


def test_every_option_has_its_flags_and_env_var():
    from qaudit.cli.fix import build_fix_parser

    audit_flags = {s for a in build_parser()._actions for s in a.option_strings}
    report_flags = {s for a in build_report_parser()._actions for s in a.option_strings}
    fix_flags = {s for a in build_fix_parser()._actions for s in a.option_strings}
    envs = [o.env for o in OPTIONS]
    assert len(set(envs)) == len(envs)
    for o in OPTIONS:
        for flag in o.flags:
            if o.group == "fix":  # qaudit fix's own settings (its caps): its flags, not an audit's
                assert flag in fix_flags and flag not in audit_flags, flag
            elif "audit" in o.commands:
                assert flag in audit_flags, flag
            assert (flag in report_flags) == ("report" in o.commands), flag


# ------------------------------------------------------------- batch axes


def test_batch_axes_merge_per_input_across_sources(tmp_path):
    write(tmp_path / "qaudit.toml", 'model = "m.onnx"\ncalib = "c"\nbatch_axis = {state = 1, sr = "none", x = 0}\n')
    assert audit(tmp_path)["batch_axis"] == {"state": 1, "sr": None, "x": 0}
    s = audit(tmp_path, "--batch-axis", "x=none,h=2", "--batch-axis", "state=-2", env={"QAUDIT_BATCH_AXIS": "h=1, c=1"})
    assert s["batch_axis"] == {"state": -2, "sr": None, "x": None, "h": 2, "c": 1}
    assert s.sources["batch_axis"] == "--batch-axis"
    assert s.audit_config().batch_axis == {"state": -2, "sr": None, "x": None, "h": 2, "c": 1}
    (tmp_path / "empty").mkdir()
    assert audit(tmp_path / "empty")["batch_axis"] == {}  # the default: every axis inferred from the model


@pytest.mark.parametrize(
    "source, words",
    [
        ({"argv": ["--batch-axis", "state"]}, ["batch_axis from --batch-axis", "'state' is not NAME=AXIS"]),
        ({"argv": ["--batch-axis", "state=one"]}, ["--batch-axis for 'state'", "integer axis or 'none'", "'one'"]),
        ({"env": {"QAUDIT_BATCH_AXIS": "=1"}}, ["QAUDIT_BATCH_AXIS", "not NAME=AXIS"]),
        ({"toml": "batch_axis = 1\n"}, ["batch_axis", "qaudit.toml", "table of input name = axis"]),
        ({"toml": "batch_axis = {state = 1.5}\n"}, ["batch_axis", "for 'state'", "1.5"]),
    ],
)
def test_batch_axis_errors_name_the_source(tmp_path, source, words):
    if "toml" in source:
        write(tmp_path / "qaudit.toml", source["toml"])
    with pytest.raises(ConfigError) as e:
        audit(tmp_path, *source.get("argv", []), env=source.get("env"))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
