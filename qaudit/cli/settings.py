"""Configuration sources and their precedence: one table of options, one function.

:data:`OPTIONS` lists every setting once: its config-file key, type, default,
command-line flag, environment variable and help. :func:`resolve` is the only
place that knows the order in which sources override each other
(docs/configuration.md):

1. defaults (the table, and each gate's default in :data:`qaudit.gate.GATES`);
2. a config file: ``--config PATH``, else ``$QAUDIT_CONFIG``, else
   ``./qaudit.toml``, else ``./pyproject.toml`` if it has a ``[tool.qaudit]``
   table. Paths in the file are relative to the file's directory;
3. environment variables ``QAUDIT_<KEY>`` (``QAUDIT_MIN_LAYER_SQNR=25``);
4. the command line.

A later source overrides exactly what it sets. Gate thresholds merge per
entry: the default and each glob override are separate entries, so
``--min-layer-sqnr 30`` replaces the file's default and keeps its
``[gates.layers."/fc2/*"]`` override. ``off`` turns an entry off.

Unknown keys, unknown ``QAUDIT_*`` variables and invalid values raise
:class:`~qaudit.errors.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from qaudit.errors import ConfigError
from qaudit.gate import GATES, GATES_BY_NAME, GateConfig, GateDef, Threshold
from qaudit.options import ACTIVATION_TYPES, CALIBRATE_METHODS, FORMATS, WEIGHT_TYPES, AuditConfig, audit_config
from qaudit.pipeline.sources.preprocess import check_table as check_preprocess
from qaudit.pipeline.sources.preprocess import help_text as preprocess_help

AUDIT, REPORT = "audit", "report"
BOTH = (AUDIT, REPORT)
OFF = "off"


def _at_least(lo: float) -> Callable:
    def check(v):
        if v < lo:
            raise ValueError(f"must be >= {lo:g}, not {v!r}")

    return check


def _trials(v):
    if v != 0 and v < 2:  # 0: none (a [[part]] of a sweep turns off the top level's trials so)
        raise ValueError(f"must be 0 (none) or >= 2 (a spread needs two trials), not {v!r}")


def _calibrate_method(v):
    methods = [m.strip() for m in v.split(",")]
    for m in methods:
        if m not in CALIBRATE_METHODS:
            raise ValueError(f"must be one of {', '.join(CALIBRATE_METHODS)} (or a comma list of them), not {m!r}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ValueError(f"lists {repeated[0]} twice: each method is one run of the audit")


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable:
    def check(v):
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            raise ValueError(f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, not {v!r}")

    return check


def _max_cost(v):
    if v != 0 and v < 2:  # the audit before and the verifying audit alone are 2
        raise ValueError(f"must be 0 (no cost cap) or at least 2 (the audit before and the verifying audit), not {v!r}")


@dataclass(frozen=True)
class Option:
    """One setting. ``kind``: path (an input file), out (an output file, ``-`` = stdout),
    str, int, float, bool, list (of str), axes (input name -> axis or none), preprocess (a preset and keys,
    qaudit.pipeline.sources.preprocess) or gate
    (a :class:`~qaudit.gate.Threshold`)."""

    name: str
    kind: str
    help: str
    default: object = None
    choices: tuple[str, ...] = ()
    check: Callable | None = None
    commands: tuple[str, ...] = (AUDIT,)
    section: str = ""  # "" (top level) or "gates"
    group: str = "audit"  # CLI help group
    #: bool options: the flags that set True and False
    bool_flags: tuple[str, str] | None = None
    metavar: str | None = None
    #: list options: one value per flag (repeat the flag or comma-separate), so it cannot swallow MODEL.onnx
    one_per_flag: bool = False
    #: str options holding a comma list: a config file may give a TOML list of strings instead
    toml_list: bool = False

    @property
    def flag(self) -> str | None:
        return None if self.name == "model" else "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        if self.kind == "bool":
            return self.bool_flags or (self.flag, "--no-" + self.name.replace("_", "-"))
        return (self.flag,) if self.flag else ()

    @property
    def env(self) -> str:
        return "QAUDIT_" + self.name.upper()


def _gate_option(g: GateDef) -> Option:
    unit = f" ({g.unit})" if g.unit else ""
    return Option(
        g.name,
        "gate",
        g.help + unit,
        default=g.default,
        commands=BOTH,
        section="gates",
        group="regression" if g.kind == "regression" else "gates",
        metavar="[GLOB=]VALUE",
    )


#: Every option, in the order of ``--help``. The gate options come from :data:`qaudit.gate.GATES`.
OPTIONS: tuple[Option, ...] = (
    Option("model", "path", "the fp32 ONNX model (never modified)", group="input", metavar="MODEL.onnx"),
    Option(
        "calib",
        "path",
        "calibration data: directory of .npy/.npz or test_data_set_* (required)",
        group="input",
        metavar="DIR",
    ),
    Option(
        "quantized",
        "path",
        "audit this model, quantized elsewhere from MODEL.onnx, as it is: no calibration, no quantization "
        "(needs --eval; the quantization options do not apply)",
        group="input",
        metavar="Q.onnx",
    ),
    Option(
        "eval", "path", "evaluation data (default: the calibration data, which flatters)", group="input", metavar="DIR"
    ),
    Option(
        "labels",
        "path",
        ".npy of integer labels, one per evaluation sample (sorted file order)",
        group="input",
        metavar="F.npy",
    ),
    Option(
        "class_names",
        "path",
        "class subfolders: a file of class names, one per line, in the model's order (default: sorted folder names)",
        group="input",
        metavar="FILE",
    ),
    Option("preprocess", "preprocess", preprocess_help(), group="input", metavar="PRESET[,KEY=VALUE]"),
    Option(
        "label_output",
        "str",
        "the model output the labels score (default: the one output holding class scores)",
        group="input",
        metavar="NAME",
    ),
    Option(
        "class_outputs",
        "list",
        "model outputs holding class scores, comma-separated, or 'none' (default: Softmax/LogSoftmax outputs, "
        "else the one [N, K] output); the others are regression outputs",
        (),
        group="input",
        metavar="NAME[,NAME]",
        one_per_flag=True,
    ),
    Option("format", "str", "ORT quantization format", "qdq", FORMATS, group="quantization"),
    Option(
        "activation_type", "str", "activation type (16-bit: QDQ only)", "uint8", ACTIVATION_TYPES, group="quantization"
    ),
    Option("weight_type", "str", "weight type (16- and 4-bit: QDQ only)", "uint8", WEIGHT_TYPES, group="quantization"),
    Option("per_channel", "bool", "per-channel weight quantization (default: per-tensor)", False, group="quantization"),
    Option(
        "calibrate_method",
        "str",
        "ORT's calibrator: percentile, minmax, entropy or distribution (default percentile); each takes only its "
        "own options below. A comma list (percentile,entropy,minmax) calibrates once and audits one run per "
        "method, side by side in one report; every run is gated",
        "percentile",
        check=_calibrate_method,
        group="quantization",
        metavar="METHOD[,METHOD]",
        toml_list=True,
    ),
    Option(
        "percentile",
        "float",
        "percentile: the percentile kept (default 99.999, ORT's)",
        None,
        check=_between(0, 100, lo_open=True),
        group="quantization",
        metavar="P",
    ),
    Option(
        "calib_symmetric",
        "bool",
        "percentile, minmax: symmetric range; percentile histograms |x| (its default), --calib-asymmetric signed "
        "values; minmax: -max|x|..max|x| (default: asymmetric, min..max)",
        None,
        group="quantization",
        bool_flags=("--calib-symmetric", "--calib-asymmetric"),
    ),
    Option(
        "num_bins",
        "int",
        "percentile, entropy, distribution: histogram bins (ORT's defaults: 2048, 128, 2048)",
        None,
        check=_at_least(16),
        group="quantization",
        metavar="N",
    ),
    Option(
        "num_quantized_bins",
        "int",
        "entropy: bins of the quantized distribution whose KL divergence is minimized (default 128, ORT's)",
        None,
        check=_at_least(2),
        group="quantization",
        metavar="N",
    ),
    Option(
        "moving_average",
        "bool",
        "minmax: moving average of each batch's min and max instead of the global min and max",
        None,
        group="quantization",
        bool_flags=("--moving-average", "--no-moving-average"),
    ),
    Option(
        "averaging_constant",
        "float",
        "minmax with --moving-average: the smoothing constant c, range <- range + c * (batch range - range) "
        "(default 0.01, ORT's)",
        None,
        check=_between(0, 1),
        group="quantization",
        metavar="C",
    ),
    Option("exclude", "list", "node names to leave in float", (), group="quantization", metavar="NODE"),
    Option(
        "overrides",
        "overrides",
        "per-tensor overrides (type, per_channel, symmetric, rmin/rmax, scale/zero_point by tensor or node glob): "
        "a TOML file holding the [overrides] table of docs/configuration.md",
        None,
        group="quantization",
        metavar="FILE.toml",
    ),
    Option(
        "batch_size",
        "int",
        "samples per inference batch (default: as many as fit 256 MiB of activations, at most 64)",
        None,
        check=_at_least(1),
        group="measurement",
        metavar="N",
    ),
    Option(
        "batch_axis",
        "axes",
        "the batch axis of an input, e.g. state=1 ('none': fed as it is, never split or concatenated); "
        "repeat or comma-separate (default: from the model's dims)",
        {},
        group="measurement",
        metavar="NAME=AXIS",
    ),
    Option(
        "max_samples",
        "int",
        "use at most N samples of each data set",
        None,
        check=_at_least(1),
        group="measurement",
        metavar="N",
    ),
    Option(
        "clip_percentile",
        "float",
        "activation range clipping, percent per side (default 1)",
        1.0,
        check=_between(0, 50, hi_open=True),
        group="measurement",
        metavar="P",
    ),
    Option(
        "isolated",
        "bool",
        "also measure each layer's isolated error (--no-isolated: accumulated only, faster)",
        True,
        group="measurement",
        bool_flags=("--isolated", "--no-isolated"),
    ),
    Option(
        "trials",
        "int",
        "also calibrate on N random subsets of the calibration files and report each metric's mean, std, min "
        "and max over them (the main report and the gates stay the full-data audit's; 0: none)",
        None,
        check=_trials,
        group="measurement",
        metavar="N",
    ),
    Option("seed", "int", "the seed the --trials subsets are drawn from (default 0)", 0, group="measurement"),
    Option(
        "trial_fraction",
        "float",
        "the fraction of the calibration files each --trials subset holds (default 0.5)",
        0.5,
        check=_between(0, 1, lo_open=True, hi_open=True),
        group="measurement",
        metavar="F",
    ),
    Option(
        "runtimes",
        "list",
        "runtimes that run the quantized model, comma-separated: ort (default), ort-sim (graph optimizations "
        "off), openvino, ort:PROVIDER (an ONNX Runtime execution provider); the first feeds the main table",
        ("ort",),
        group="measurement",
        metavar="NAME",
        one_per_flag=True,
    ),
    Option(
        "ray_address",
        "str",
        "run on the Ray cluster at ADDRESS ('auto': RAY_ADDRESS or the local 'ray start'): the evaluation is "
        "sharded over its workers (qaudit fix: its measurements too), results identical to a local run (needs pip "
        'install "qaudit[ray]")',
        group="measurement",
        metavar="ADDRESS",
    ),
    Option(
        "ray_shared_dir",
        "path",
        "with --ray-address: a folder every Ray node mounts at the same path; the models and data are "
        "written there and the workers read them by path, not through Ray's object store (qaudit sweep: "
        "files already in it are read in place)",
        group="measurement",
        metavar="DIR",
    ),
    Option(
        "max_cost",
        "float",
        "qaudit fix: stop measuring change sets when the fix would take more than X times the audit before's wall "
        "time (the next set and the verifying audit estimated; default 5; 0: no cost cap)",
        5.0,
        check=_max_cost,
        group="fix",
        metavar="X",
    ),
    Option(
        "minimal",
        "bool",
        "qaudit fix: no cost cap: measure until the set is 1-minimal (or --max-measurements, default then 1000)",
        False,
        group="fix",
        bool_flags=("--minimal", "--no-minimal"),
    ),
    Option(
        "workers",
        "int",
        "qaudit fix: measure change sets N at a time, in N local processes (default 1; under the count cap alone the "
        "same recipe and measurements as 1; not with --ray-address)",
        1,
        check=_at_least(1),
        group="fix",
        metavar="N",
    ),
    Option(
        "output_model",
        "out",
        "write the quantized model that was audited; with several calibration methods the first run's, or one "
        "file per run with {run} in PATH (q-{run}.onnx -> q-entropy.onnx)",
        group="output",
        metavar="PATH",
    ),
    Option(
        "html",
        "out",
        "write a self-contained HTML report with layerwise plots to PATH ('-' for stdout)",
        commands=BOTH,
        group="output",
        metavar="PATH",
    ),
    Option(
        "json", "out", "write the JSON report to PATH ('-' for stdout)", commands=BOTH, group="output", metavar="PATH"
    ),
    Option(
        "junit",
        "out",
        "write the gate checks as JUnit XML to PATH ('-' for stdout)",
        commands=BOTH,
        group="output",
        metavar="PATH",
    ),
    Option(
        "markdown",
        "out",
        "write a Markdown summary (verdict, failing gates, worst layers) to PATH ('-' for stdout)",
        commands=BOTH,
        group="output",
        metavar="PATH",
    ),
    Option(
        "worst",
        "int",
        "how many worst layers to highlight (default 3)",
        3,
        check=_at_least(0),
        commands=BOTH,
        group="output",
        metavar="N",
    ),
    Option(
        "quiet",
        "bool",
        "print only the verdict (nothing when no gate is configured); no progress bars",
        False,
        commands=BOTH,
        group="output",
    ),
    Option(
        "baseline",
        "path",
        "the JSON report of the previous release: enables the regression gates (--no-baseline: none)",
        commands=BOTH,
        group="regression",
        metavar="REPORT.json",
    ),
    Option(
        "skip_missing",
        "bool",
        "a gate whose metric is missing (null/NaN) is skipped instead of failing",
        False,
        commands=BOTH,
        section="gates",
        group="gates",
    ),
    *(_gate_option(g) for g in GATES),
)
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
ENV_CONFIG = "QAUDIT_CONFIG"
#: Not a setting: which per-value loops to use (qaudit/pipeline/kernels.py); read there.
ENV_KERNELS = "QAUDIT_KERNELS"


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one command, and where each value came from."""

    command: str
    values: dict
    gates: GateConfig
    #: option name -> "default", a config file location, an environment variable or a flag
    sources: dict = field(default_factory=dict)
    config_file: Path | None = None

    def __getitem__(self, name: str):
        return self.values[name]

    def audit_config(self) -> AuditConfig:
        v = self.values
        required = [("model", "model", "give MODEL.onnx")]
        if v.get("quantized") is None:  # a model quantized elsewhere is not calibrated
            required.append(("calib", "calibration data", "give --calib DIR"))
        for name, what, hint in required:
            if v.get(name) is None:
                o = OPTIONS_BY_NAME[name]
                raise ConfigError(f"no {what}: {hint}, or set '{name}' in a config file or {o.env}")
        # every other option named as its AuditConfig/QuantConfig field: one constructor for CLI and API
        fields = ("output_model", "batch_size", "batch_axis", "max_samples", "clip_percentile", "isolated", "format")
        fields += ("activation_type", "weight_type", "per_channel", "percentile", "calib_symmetric", "exclude")
        fields += ("label_output", "class_outputs", "quantized", "overrides", "runtimes", "ray_address")
        fields += ("ray_shared_dir",)
        fields += ("calibrate_method", "num_bins", "num_quantized_bins", "moving_average", "averaging_constant")
        fields += ("preprocess", "class_names", "seed", "trial_fraction")
        trials = {"trials": v["trials"]} if v.get("trials") else {}
        return audit_config(v["model"], v["calib"], v["eval"], v["labels"], **{k: v[k] for k in fields}, **trials)


# ----------------------------------------------------------- value parsing


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _checked(opt: Option, value, where: str):
    try:
        if opt.choices and value not in opt.choices:
            raise ValueError(f"must be one of {', '.join(opt.choices)}, not {value!r}")
        if opt.check is not None and value is not None:
            opt.check(value)
    except ValueError as e:
        raise ConfigError(f"{opt.name} {where}: {e}") from None
    return value


def _typed(opt: Option, value, where: str, base: Path | None):
    """A value from a TOML file (already typed) checked against ``opt.kind``."""

    def bad(expected):
        return ConfigError(f"{opt.name} {where} must be {expected}, not {value!r}")

    if opt.kind in ("path", "out"):
        if not isinstance(value, str) or not value:
            raise bad("a non-empty path string")
        if opt.kind == "out" and value == "-":
            return value
        p = Path(value)
        return str(p if p.is_absolute() or base is None else base / p)
    if opt.kind == "str":
        if opt.toml_list and isinstance(value, list):  # ["percentile", "entropy"]: the comma list "percentile,entropy"
            if not value or not all(isinstance(x, str) and x.strip() and "," not in x for x in value):
                raise bad('a string or a non-empty list of names (e.g. ["percentile", "entropy"])')
            return _checked(opt, ",".join(value), where)
        if not isinstance(value, str):
            raise bad("a string" + (" or a list of strings" if opt.toml_list else ""))
        return _checked(opt, value, where)
    if opt.kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return _checked(opt, value, where)
    if opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        return _checked(opt, float(value), where)
    if opt.kind == "list":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise bad("a list of strings")
        return tuple(value)
    if opt.kind == "overrides":  # the table itself, or the path of a file holding it
        if isinstance(value, str) and value:
            return read_overrides(Path(value) if Path(value).is_absolute() or base is None else base / value)
        if not isinstance(value, dict):
            raise bad("a table (sub-tables 'tensors' and 'nodes') or the path of a TOML file holding one")
        from qaudit.pipeline.overrides import check_table

        return check_table(value, where.removeprefix("in "))
    if opt.kind == "preprocess":  # a preset name, the compact string, or a table of keys
        return check_preprocess(value, where)
    if opt.kind == "axes":
        if not isinstance(value, dict):
            raise bad("a table of input name = axis, e.g. {state = 1}")
        return {k: _axis_value(opt, v, f"{where} for '{k}'") for k, v in value.items()}
    raise AssertionError(f"unknown option kind {opt.kind}")


def read_overrides(path: Path) -> dict:
    """The overrides table of a ``--overrides`` file: its top level, or its ``[overrides]`` table
    (a qaudit.toml or pyproject.toml's ``[tool.qaudit.overrides]`` also works)."""
    from qaudit.pipeline.overrides import check_table

    if not path.is_file():
        raise ConfigError(f"overrides file not found: {path}")
    data = _read_toml(path)
    data = data.get("tool", {}).get("qaudit", data) if path.name == "pyproject.toml" else data
    if "overrides" in data:
        data = data["overrides"]
    return check_table(data, str(path))


def _axis_value(opt: Option, value, where: str) -> int | None:
    """A batch axis: an integer, or "none" (the input is fed as it is)."""
    if isinstance(value, str):
        s = value.strip()
        if s.lower() == "none":
            return None
        try:
            return int(s)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{opt.name} {where} must be an integer axis or 'none', not {value!r}")


def parse_axis_items(opt: Option, items, where: str) -> dict[str, int | None]:
    """``["state=1", "sr=none,x=0"]`` -> ``{"state": 1, "sr": None, "x": 0}``."""
    out: dict[str, int | None] = {}
    for part, name, sep, value in _parts(items):
        if not sep or not name:
            raise ConfigError(f"{opt.name} {where}: '{part}' is not NAME=AXIS (e.g. state=1, or sr=none)")
        out[name] = _axis_value(opt, value, f"{where} for '{name}'")
    return out


def _parts(items):
    """``(part, key, "=" or "", value)`` of every comma-separated ``[KEY=]VALUE`` in ``items``."""
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part:
                key, sep, value = part.rpartition("=")
                yield part, key.strip(), sep, value


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _from_string(opt: Option, text: str, where: str):
    """A value from an environment variable."""
    s = text.strip()
    if opt.kind in ("path", "out", "str"):
        return _checked(opt, s, where) if opt.kind == "str" else s
    if opt.kind == "bool":
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ConfigError(f"{opt.name} {where} must be one of 1/0, true/false, yes/no, on/off, not {text!r}")
    if opt.kind == "int":
        try:
            return _checked(opt, int(s), where)
        except ValueError:
            raise ConfigError(f"{opt.name} {where} must be an integer, not {text!r}") from None
    if opt.kind == "float":
        try:
            v = float(s)
        except ValueError:
            raise ConfigError(f"{opt.name} {where} must be a number, not {text!r}") from None
        if not math.isfinite(v):
            raise ConfigError(f"{opt.name} {where} must be a finite number, not {text!r}")
        return _checked(opt, v, where)
    if opt.kind == "list":
        return tuple(x.strip() for x in s.split(",") if x.strip())
    if opt.kind == "axes":
        return parse_axis_items(opt, [s], where)
    if opt.kind == "overrides":
        return read_overrides(Path(s))
    if opt.kind == "preprocess":
        return check_preprocess(s, where)
    raise AssertionError(f"unknown option kind {opt.kind}")


def _threshold_value(gd: GateDef, value, where: str) -> float | None:
    """A gate threshold: a number, or "off" (None)."""
    if isinstance(value, str):
        s = value.strip()
        if s.lower() == OFF:
            return None
        try:
            value = float(s)
        except ValueError:
            raise ConfigError(f"{gd.name} {where} must be a number or 'off', not {s!r}") from None
    try:
        return gd.check_value(value)
    except ValueError as e:
        raise ConfigError(f"{gd.name} {where} {e}") from None


def parse_threshold_items(gd: GateDef, items, where: str) -> dict[str | None, float | None]:
    """``["25", "/fc2/*=20", "input=off"]`` (each item may hold several, comma-separated) ->
    ``{None: 25.0, "/fc2/*": 20.0, "input": None}``. ``None`` keys the default."""
    out: dict[str | None, float | None] = {}
    for part, pattern, sep, value in _parts(items):
        if sep and not pattern:
            raise ConfigError(f"{gd.name} {where}: '{part}' has no glob before '='; write GLOB=VALUE or VALUE")
        key = pattern if sep else None
        out[key] = _threshold_value(gd, value, where + (f" for '{key}'" if key else ""))
    return out


# ----------------------------------------------------------- config files


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except UnicodeDecodeError as e:  # tomllib decodes the bytes first: a binary file, or not UTF-8
        raise ConfigError(
            f"cannot read config file {path}: it is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}); TOML files are UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None


def find_config(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> tuple[Path, dict, str] | None:
    """``(path, qaudit table, table name)`` of the config file in use, or None.

    ``pyproject.toml`` holds the table ``[tool.qaudit]``; any other file *is* the table.
    """
    named = explicit if explicit else environ.get(ENV_CONFIG) or None
    if named:
        where = "--config" if explicit else ENV_CONFIG
        path = Path(named)
        if not path.is_absolute():
            path = cwd / path
        if not path.is_file():
            raise ConfigError(f"config file not found: {named} (from {where})")
        data = _read_toml(path)
        if path.name == "pyproject.toml":
            table = data.get("tool", {}).get("qaudit")
            if table is None:
                raise ConfigError(f"{named} has no [tool.qaudit] table (from {where})")
            return Path(named), table, "[tool.qaudit]"
        return Path(named), data, ""
    if (cwd / "qaudit.toml").is_file():
        return Path("qaudit.toml"), _read_toml(cwd / "qaudit.toml"), ""
    if (cwd / "pyproject.toml").is_file():
        table = _read_toml(cwd / "pyproject.toml").get("tool", {}).get("qaudit")
        if table is not None:
            return Path("pyproject.toml"), table, "[tool.qaudit]"
    return None


def _section(prefix: str, *parts: str) -> str:
    inner = ".".join([prefix.strip("[]")] if prefix else [])
    for p in parts:
        inner = f"{inner}.{p}" if inner else p
    return f"[{inner}]" if inner else "the top level"


def _quote(glob: str) -> str:
    return '"' + glob.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _file_keys(prefix: str, path: Path):
    """``(top-level keys, gate keys, where(*parts), unknown(key, valid, *parts, hint))`` of a config file."""
    top = {o.name for o in OPTIONS if o.section == ""}
    gate_keys = {o.name for o in OPTIONS if o.section == "gates"}

    def where(*parts):
        return f"in {_section(prefix, *parts)} of {path}"

    def unknown(key, valid, *parts, hint=""):
        return ConfigError(f"unknown key '{key}' {where(*parts)}{hint or _suggest(key, valid)}")

    return top, gate_keys, where, unknown


def _file_values(command: str, path: Path, table: dict, prefix: str, base: Path) -> tuple[dict, dict]:
    """``(values, gate entries)`` from a config file's qaudit table; every key is checked, for every command."""
    values: dict = {}
    gates: dict[str, dict] = {}
    top, gate_keys, where, unknown = _file_keys(prefix, path)

    for key, value in table.items():
        if key == "gates":
            if not isinstance(value, dict):
                raise ConfigError(f"'gates' {where()} must be a table")
            continue
        if key == "runtimes" and isinstance(value, dict):  # [runtimes.NAME] tables: the list and their gates
            values["runtime_gates"] = {}
            for name, sub in _runtime_tables(value, where).items():
                at = ("runtimes", _quote(name))
                if "skip_missing" in sub:
                    raise ConfigError(f"skip_missing {where(*at)} applies to every gate: set it in [gates]")
                values["runtime_gates"][name] = _gate_entries(sub, prefix, path, at, base)[1]
            if command in OPTIONS_BY_NAME[key].commands:
                values[key] = tuple(value)
            continue
        if key not in top:
            hint = f" ('{key}' belongs in {_section(prefix, 'gates')})" if key in gate_keys else ""
            raise unknown(key, top | {"gates"}, hint=hint)
        opt = OPTIONS_BY_NAME[key]
        v = _typed(opt, value, where(), base)
        if command in opt.commands:
            values[key] = v

    found, gates = _gate_entries(table.get("gates", {}), prefix, path, ("gates",), base)
    values.update(found)
    return values, gates


def _runtime_tables(value: dict, where) -> dict:
    for name, sub in value.items():
        if not isinstance(sub, dict):
            raise ConfigError(
                f"'runtimes' {where()} is a list of names or a table of [runtimes.NAME] tables (each holding "
                f"gate thresholds for that runtime); '{name}' is not a table"
            )
    return value


def _gate_entries(g: dict, prefix: str, path: Path, at: tuple[str, ...], base: Path) -> tuple[dict, dict]:
    """``(values, gate entries)`` of a gates table (``[gates]``, or a ``[runtimes.NAME]`` table)."""
    values: dict = {}
    gates: dict[str, dict] = {}
    top, gate_keys, where, unknown = _file_keys(prefix, path)

    for key, value in g.items():
        if key in ("layers", "outputs"):
            if not isinstance(value, dict) or not all(isinstance(x, dict) for x in value.values()):
                raise ConfigError(
                    f"'{key}' {where(*at)} must hold tables keyed by glob, e.g. "
                    f"{_section(prefix, *at, key, _quote('/fc2/*'))}"
                )
            continue
        if key not in gate_keys:
            hint = f" ('{key}' belongs at {_section(prefix)})" if key in top else ""
            raise unknown(key, gate_keys | {"layers", "outputs"}, *at, hint=hint)
        if key == "skip_missing":
            values[key] = _typed(OPTIONS_BY_NAME[key], value, where(*at), base)
        else:
            gates.setdefault(key, {})[None] = _threshold_value(GATES_BY_NAME[key], value, where(*at))

    for scope_key, scope in (("layers", "layer"), ("outputs", "output")):
        for glob, sub in g.get(scope_key, {}).items():
            parts = (*at, scope_key, _quote(glob))
            if not glob:
                raise ConfigError(f"an empty glob {where(*at, scope_key)}; name a {scope} or a glob like '/fc2/*'")
            valid = {gd.name for gd in GATES if gd.scope == scope}
            for key, value in sub.items():
                if key not in valid:
                    other = GATES_BY_NAME.get(key)
                    hint = ""
                    if other is not None:
                        other_key = "layers" if other.scope == "layer" else "outputs"
                        hint = f" ({key} is a{'n' if other.scope == 'output' else ''} {other.scope} gate: put it under {_section(prefix, *at, other_key, _quote(glob))})"
                    raise unknown(key, valid, *parts, hint=hint)
                gates.setdefault(key, {})[glob] = _threshold_value(GATES_BY_NAME[key], value, where(*parts))
    return values, gates


# ----------------------------------------------------------- the function


def resolve(
    command: str,
    cli: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    file: tuple[Path, dict] | None = None,
) -> Settings:
    """The settings of ``command`` ("audit" or "report") from every source, in precedence order.

    ``cli`` holds only what the command line set explicitly (option name ->
    value; gate options as lists of ``[GLOB=]VALUE`` strings; ``config`` for
    ``--config``). ``environ`` defaults to ``os.environ``, ``cwd`` to the
    current directory. ``file``: a table read elsewhere and where it came from (one
    point of a ``qaudit sweep`` file), in place of the config file.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else Path(cwd)
    mine = [o for o in OPTIONS if command in o.commands]
    values: dict = {}
    gates: dict[str, dict] = {}
    sources: dict = {}

    # 1. defaults ------------------------------------------------------------
    for o in mine:
        if o.kind == "gate":
            gates[o.name] = {None: o.default}
        else:
            values[o.name] = o.default
        sources[o.name] = "default"

    # 2. the config file -----------------------------------------------------
    found = find_config(cli.get("config"), environ, cwd) if file is None else (*file, "")
    config_file = None
    if found is not None:
        config_file, table, prefix = found
        base = config_file.parent
        file_values, file_gates = _file_values(command, config_file, table, prefix, base)
        where = f"{config_file} {prefix}".strip()
        for k, v in file_values.items():
            values[k] = v
            sources[k] = where
        for k, entries in file_gates.items():
            gates[k].update(entries)
            sources[k] = where

    # 3. the environment -----------------------------------------------------
    known_env = {o.env: o for o in OPTIONS}
    for var in sorted(environ):
        if not var.startswith("QAUDIT_") or var in (ENV_CONFIG, ENV_KERNELS):
            continue
        o = known_env.get(var)
        if o is None:
            raise ConfigError(
                f"unknown environment variable {var}{_suggest(var, [*known_env, ENV_CONFIG, ENV_KERNELS])}"
            )
        if command not in o.commands or not environ[var].strip():
            continue  # an empty variable counts as unset
        if o.kind == "gate":
            gates[o.name].update(parse_threshold_items(GATES_BY_NAME[o.name], [environ[var]], f"from {var}"))
        elif o.kind == "axes":  # per input, like gate entries
            values[o.name] = {**values[o.name], **_from_string(o, environ[var], f"from {var}")}
        else:
            values[o.name] = _from_string(o, environ[var], f"from {var}")
        sources[o.name] = var

    # 4. the command line ----------------------------------------------------
    for name, v in cli.items():
        if name == "config" or v is None:
            continue
        o = OPTIONS_BY_NAME.get(name)
        if o is None or command not in o.commands:
            raise AssertionError(f"the command line passed an unknown option {name!r}")
        flag = o.flag or name
        if o.kind == "gate":
            gates[name].update(parse_threshold_items(GATES_BY_NAME[name], v, f"from {flag}"))
        elif o.kind == "list":
            values[name] = tuple(v)
        elif o.kind == "axes":
            values[name] = {**values[name], **parse_axis_items(o, v, f"from {flag}")}
        elif o.kind == "overrides":
            p = Path(v)
            values[name] = read_overrides(p if p.is_absolute() else cwd / p)
        elif o.kind == "preprocess":
            values[name] = check_preprocess(v, f"from {flag}")
        elif o.name == "baseline" and v == "":
            values[name] = None  # --no-baseline
        else:
            values[name] = _checked(o, v, f"from {flag}") if o.kind in ("str", "int", "float") else v
        sources[name] = flag

    # 5. build the typed configuration ----------------------------------------
    thresholds = {
        name: Threshold(default=entries.get(None), overrides={k: v for k, v in entries.items() if k is not None})
        for name, entries in gates.items()
    }
    runtime_gates = {
        rt: {
            name: Threshold(default=e.get(None), overrides={k: v for k, v in e.items() if k is not None})
            for name, e in entries.items()
        }
        for rt, entries in values.pop("runtime_gates", {}).items()
    }
    gate_config = GateConfig(thresholds, skip_missing=bool(values.get("skip_missing", False)), runtimes=runtime_gates)
    return Settings(command, values, gate_config, sources, config_file)


__all__ = ["OPTIONS", "Option", "Settings", "find_config", "parse_threshold_items", "resolve"]
