"""Typed settings for an audit, and their translation to ONNX Runtime's options.

ORT's ``quantize_static`` takes a string-keyed ``extra_options`` dict whose
defaults are buried in several functions. :class:`QuantConfig` names every
setting qaudit uses, validates it, and :meth:`QuantConfig.ort_extra_options`
is the one place that spells ORT's keys. The report records
:meth:`QuantConfig.as_dict`, i.e. the settings actually used.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from qaudit.errors import ConfigError

QUANT_TYPES = ("uint8", "int8")
#: Types ORT's quantizer writes (onnxruntime 1.32): activations up to 16 bits, weights also 4 bits.
ACTIVATION_TYPES = QUANT_TYPES + ("uint16", "int16")
WEIGHT_TYPES = ACTIVATION_TYPES + ("uint4", "int4")
#: Types only the QDQ format has: ORT's QOperator ops (QLinearConv, ...) are 8-bit only.
QDQ_ONLY_TYPES = ("uint16", "int16", "uint4", "int4")
#: 16-bit Q/DQ is in the ONNX domain from opset 21 (ORT raises the opset for them, quant_utils.update_opset_version).
SIXTEEN_BIT_OPSET = 21
#: The integer range ``[q_lo, q_hi]`` of each quantized type (docs/metrics.md).
INTEGER_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "uint4": (0, 15),
    "int4": (-8, 7),
}
FORMATS = ("qdq", "qoperator")
#: ORT's calibrators (``onnxruntime.quantization.CalibrationMethod``), by qaudit's name
CALIBRATE_METHODS = ("percentile", "minmax", "entropy", "distribution")
#: each method's options and ORT's default for it (``create_calibrator``, onnxruntime 1.32);
#: an option a method does not take is an error, not ignored (ORT ignores ``symmetric`` for Entropy)
CALIBRATION_DEFAULTS: dict[str, dict[str, object]] = {
    "percentile": {"percentile": 99.999, "calib_symmetric": True, "num_bins": 2048},
    "minmax": {"calib_symmetric": False, "moving_average": False, "averaging_constant": 0.01},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128},
    "distribution": {"num_bins": 2048},
}
CALIBRATION_OPTIONS = (
    "percentile",
    "calib_symmetric",
    "num_bins",
    "num_quantized_bins",
    "moving_average",
    "averaging_constant",
)


@dataclass(frozen=True)
class QuantConfig:
    """How the model is quantized (ONNX Runtime static quantization)."""

    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "uint8"
    per_channel: bool = False
    reduce_range: bool = False
    #: ORT's calibrator: one of :data:`CALIBRATE_METHODS`. Its options below are
    #: ``None`` for "the method's default" (:data:`CALIBRATION_DEFAULTS`, ORT's
    #: ``create_calibrator`` defaults on onnxruntime 1.32); setting one the method
    #: does not take is a :class:`ConfigError`. :meth:`calibration` gives the values used.
    #: Percentile is *symmetric* (histogram of |x|) by default, MinMax is not; a
    #: symmetric Percentile range is still clamped to the observed min, so a ReLU
    #: output keeps ``rmin = 0``.
    calibrate_method: str = "percentile"
    percentile: float | None = None  # percentile
    calib_symmetric: bool | None = None  # percentile, minmax
    num_bins: int | None = None  # percentile, entropy, distribution
    num_quantized_bins: int | None = None  # entropy
    moving_average: bool | None = None  # minmax
    averaging_constant: float | None = None  # minmax, with moving_average
    exclude: tuple[str, ...] = ()
    #: per-tensor overrides, ``{"tensors": {glob: settings}, "nodes": {glob: settings}}``
    #: (qaudit.pipeline.overrides; docs/configuration.md); ``None``: none
    overrides: Mapping | None = None

    def __post_init__(self):
        if self.overrides is not None:
            from qaudit.pipeline.overrides import check_table

            object.__setattr__(self, "overrides", check_table(self.overrides) or None)
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        for key, types in (("activation_type", ACTIVATION_TYPES), ("weight_type", WEIGHT_TYPES)):
            if getattr(self, key) not in types:
                raise ConfigError(f"{key} must be one of {', '.join(types)}, not {getattr(self, key)!r}")
            if self.format == "qoperator" and getattr(self, key) in QDQ_ONLY_TYPES:
                raise ConfigError(
                    f"{key} {getattr(self, key)} exists only in the QDQ format (ONNX Runtime's QOperator ops are "
                    "8-bit): use --format qdq, or an 8-bit type"
                )
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ConfigError(
                "ONNX Runtime does not support int8 activations with uint8 weights; use --weight-type int8"
            )
        self._check_calibration()

    def _check_calibration(self) -> None:
        method = self.calibrate_method
        if isinstance(method, str) and "," in method:
            raise ConfigError(
                f"a QuantConfig takes one calibrate_method, not {method!r}: give several methods to "
                "qaudit.audit(calibrate_method=[...]) or --calibrate-method, which audit one run per method"
            )
        if method not in CALIBRATE_METHODS:
            raise ConfigError(f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, not {method!r}")
        takes = CALIBRATION_DEFAULTS[method]
        for key in CALIBRATION_OPTIONS:
            if getattr(self, key) is not None and key not in takes:
                users = [m for m in CALIBRATE_METHODS if key in CALIBRATION_DEFAULTS[m]]
                raise ConfigError(
                    f"{key} does not apply to {method} calibration (only to {' and '.join(users)}); "
                    f"remove it or choose --calibrate-method {users[0]}"
                )
        c = self.calibration()
        if "percentile" in c and not (0.0 < float(c["percentile"]) <= 100.0):
            raise ConfigError(f"percentile must be in (0, 100], not {c['percentile']}")
        # Distribution: ORT's compute_distribution refuses fewer than 512 bins (onnxruntime 1.32)
        least = 512 if method == "distribution" else 16
        if "num_bins" in c and int(c["num_bins"]) < least:
            raise ConfigError(f"num_bins must be at least {least} for {method} calibration, not {c['num_bins']}")
        if "num_quantized_bins" in c and not (2 <= int(c["num_quantized_bins"]) <= int(c["num_bins"])):
            raise ConfigError(
                f"num_quantized_bins must be in [2, num_bins = {c['num_bins']}], not {c['num_quantized_bins']} "
                "(Entropy searches thresholds from num_quantized_bins to num_bins bins)"
            )
        if self.averaging_constant is not None:
            if not c["moving_average"]:
                raise ConfigError("averaging_constant only applies with moving_average (--moving-average)")
            if not (0.0 <= float(self.averaging_constant) <= 1.0):
                raise ConfigError(f"averaging_constant must be in [0, 1], not {self.averaging_constant}")

    def calibration(self) -> dict:
        """The calibrator's options actually used: the method's defaults, overridden by what is set."""
        c = dict(CALIBRATION_DEFAULTS[self.calibrate_method])
        c.update({k: getattr(self, k) for k in c if getattr(self, k) is not None})
        return c

    def ort_quant_types(self):
        from onnxruntime.quantization import QuantType

        t = {
            "uint8": QuantType.QUInt8,
            "int8": QuantType.QInt8,
            "uint16": QuantType.QUInt16,
            "int16": QuantType.QInt16,
            "uint4": QuantType.QUInt4,
            "int4": QuantType.QInt4,
        }
        return t[self.activation_type], t[self.weight_type]

    @property
    def sixteen_bit(self) -> bool:
        """A 16-bit activation or weight type: Q/DQ in the ONNX domain needs opset 21."""
        return any("16" in t for t in self.types_used())

    def types_used(self) -> tuple[str, ...]:
        """The activation and weight types, and every type an override sets."""
        tables = (self.overrides or {}).values()
        return (self.activation_type, self.weight_type) + tuple(
            s["type"] for t in tables for s in t.values() if "type" in s
        )

    def ort_format(self):
        from onnxruntime.quantization import QuantFormat

        return QuantFormat.QDQ if self.format == "qdq" else QuantFormat.QOperator

    def ort_calibrate_method(self):
        from onnxruntime.quantization import CalibrationMethod

        names = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy", "distribution": "Distribution"}
        return CalibrationMethod[names[self.calibrate_method]]

    def ort_calibrator_options(self) -> dict:
        """Keys of ``onnxruntime.quantization.calibrate.create_calibrator(extra_options=...)``."""
        keys = {"calib_symmetric": "symmetric"}
        return {keys.get(k, k): v for k, v in self.calibration().items()}

    def ort_extra_options(self) -> dict:
        """Keys of ``quantize_static(extra_options=...)`` (its calibration keys, which
        cannot carry ``num_bins`` or ``num_quantized_bins``, docs/ort-quirks.md)."""
        keys = {
            "calib_symmetric": "CalibTensorRangeSymmetric",
            "percentile": "CalibPercentile",
            "moving_average": "CalibMovingAverage",
            "averaging_constant": "CalibMovingAverageConstant",
        }
        return {keys[k]: v for k, v in self.calibration().items() if k in keys}

    def as_dict(self) -> dict:
        """The settings used; a calibration option the method does not take is ``None``."""
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        if d["overrides"] is None:  # recorded only when there are overrides
            del d["overrides"]
        d.update(dict.fromkeys(CALIBRATION_OPTIONS), **self.calibration())
        return d


def describe_calibration(settings: Mapping) -> str:
    """A report's calibration in words, e.g. "percentile 99.999 (symmetric)", "minmax (asymmetric, moving average 0.01)"."""
    method = settings.get("calibrate_method") or "percentile"
    sym = settings.get("calib_symmetric")
    parts = [] if sym is None else ["symmetric" if sym else "asymmetric"]
    if settings.get("moving_average"):
        parts.append(f"moving average {settings.get('averaging_constant')}")
    if method in ("entropy", "distribution") and settings.get("num_bins"):
        parts.append(f"{settings['num_bins']} bins")
    if method == "entropy" and settings.get("num_quantized_bins"):
        parts.append(f"{settings['num_quantized_bins']} quantized bins")
    head = f"percentile {settings.get('percentile')}" if method == "percentile" else method
    return head + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class AuditConfig:
    """Everything one audit needs. Paths are not opened until :func:`qaudit.audit` runs."""

    model: Path
    #: a path, or (Python API) a CalibrationDataReader with rewind(), a callable
    #: returning a fresh iterator of feed dicts, or arrays (qaudit.pipeline.data)
    calib: Path | object
    eval: Path | object | None = None
    labels: Path | object | None = None  # a .npy file, or an integer array
    quant: QuantConfig = field(default_factory=QuantConfig)
    output_model: Path | None = None
    #: None: automatic, from the activation memory of one sample (qaudit.pipeline.parallel.auto_batch_size).
    batch_size: int | None = None
    #: {input name: axis, or None to feed it as it is}; inputs not named: inferred from the
    #: model's dims (qaudit.pipeline.data.batch_layout)
    batch_axis: Mapping[str, int | None] | None = None
    max_samples: int | None = None
    #: Also measure each layer's isolated error (one more session run per batch).
    isolated: bool = True
    #: Activation-range clipping for the report (docs/metrics.md: p = 1, i.e. 1%/99%).
    clip_percentile: float = 1.0
    #: Equivalence check of the BN-folded model: |a - b| <= atol + rtol * max|a|
    #: per output. 1e-3: deep attention models (PP-OCRv4 rec) amplify float32
    #: rounding of the folded weights to ~2e-4 of max|output|; a folding bug
    #: gives errors of order 0.1.
    fold_rtol: float = 1e-3
    fold_atol: float = 1e-5
    #: the model output the labels score (default: the one class output; docs/metrics.md)
    label_output: str | None = None
    #: the model outputs that hold class scores (default: decided from the graph); an
    #: item may hold several names, comma-separated
    class_outputs: tuple[str, ...] = ()
    #: a model quantized elsewhere, from ``model``: audited as it is (no calibration, no
    #: quantization; qaudit.pipeline.prequant)
    quantized: Path | None = None
    #: several calibration methods, one run each (a multi-run report, qaudit.runs): each run's
    #: quantization, ``quant`` being the first's; empty for a single-method audit
    runs: tuple[QuantConfig, ...] = ()
    #: how image and WAV folders become tensors: a preset and keys ({"preset": "imagenet", "size": (224, 224)},
    #: or the compact string "imagenet,size=224"; qaudit.pipeline.sources.preprocess, docs/data.md)
    preprocess: Mapping | str | None = None
    #: the class order of class subfolders: a file of one name per line, or a list (default: sorted folder names)
    class_names: Path | tuple | list | None = None
    #: calibration trials (qaudit.trials): recalibrate on this many random subsets of the calibration
    #: files, ``trial_fraction`` of them each, drawn from ``seed``; 0: none
    trials: int = 0
    seed: int = 0
    trial_fraction: float = 0.5
    #: the runtimes that run the quantized model, the first feeding the main table (docs/runtimes.md):
    #: names (``ort``, ``ort-sim``, ``openvino``, ``ort:PROVIDER``; an item may hold several,
    #: comma-separated) or :class:`qaudit.pipeline.runtimes.Runtime` objects
    runtimes: tuple = ("ort",)
    #: a Ray cluster's address (``auto``: RAY_ADDRESS or the local ``ray start``): the evaluation
    #: capture is sharded over its workers (qaudit.distributed); ``None``: this process only
    ray_address: str | None = None
    #: with ``ray_address``: a folder every Ray node mounts at the same path; the workers read the models
    #: and data there by path instead of through Ray's object store (qaudit.distributed.SharedRun)
    ray_shared_dir: Path | None = None

    def __post_init__(self):
        if isinstance(self.preprocess, (str, Mapping)):
            from qaudit.pipeline.sources.preprocess import check_table

            object.__setattr__(self, "preprocess", check_table(self.preprocess, "(preprocess)"))
        object.__setattr__(self, "model", Path(self.model))
        given = [self.runtimes] if isinstance(self.runtimes, str) else list(self.runtimes or ())
        names = [
            n.strip() if isinstance(n, str) else n for x in given for n in (x.split(",") if isinstance(x, str) else [x])
        ]
        object.__setattr__(self, "runtimes", tuple(n for n in names if n != "") or ("ort",))
        if self.quantized is not None:
            if not isinstance(self.quantized, (str, os.PathLike)):
                raise ConfigError(f"quantized must be the path of an ONNX model, not {type(self.quantized).__name__}")
            object.__setattr__(self, "quantized", Path(self.quantized))
            if self.eval is None:
                unused = " (--calib is not used: qaudit calibrates nothing)" if self.calib is not None else ""
                raise ConfigError(f"--quantized {self.quantized} needs evaluation data: give --eval DIR{unused}")
            if self.quant.overrides:
                raise ConfigError(
                    f"overrides set how qaudit quantizes; {self.quantized} is already quantized: drop the overrides"
                )
            if self.output_model is not None:
                raise ConfigError(
                    f"--output-model writes the model qaudit quantizes; with --quantized the audited model is "
                    f"{self.quantized} itself: drop --output-model"
                )
        elif self.calib is None:
            raise ConfigError("an audit needs calibration data (--calib)")
        if self.runs and self.quantized is not None:
            raise ConfigError("--quantized audits one given model: give one --calibrate-method, or none")
        if self.trials:
            self._check_trials()
        for key in ("calib", "eval", "labels", "output_model", "ray_shared_dir"):
            v = getattr(self, key)
            if isinstance(v, (str, os.PathLike)):
                object.__setattr__(self, key, Path(v))
        if self.output_model is not None and not isinstance(self.output_model, Path):
            raise ConfigError(f"output_model must be a path, not {type(self.output_model).__name__}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ConfigError(f"batch size must be >= 1, not {self.batch_size}")
        if self.batch_axis is not None:
            object.__setattr__(self, "batch_axis", batch_axes(self.batch_axis))
        if self.max_samples is not None and int(self.max_samples) < 1:
            raise ConfigError(f"max samples must be >= 1, not {self.max_samples}")
        names = [self.class_outputs] if isinstance(self.class_outputs, str) else list(self.class_outputs)
        object.__setattr__(self, "class_outputs", tuple(n.strip() for x in names for n in x.split(",") if n.strip()))
        if self.label_output is not None and (not isinstance(self.label_output, str) or not self.label_output):
            raise ConfigError(f"label_output must be an output name, not {self.label_output!r}")
        if not (0.0 <= float(self.clip_percentile) < 50.0):
            raise ConfigError(f"clip percentile must be in [0, 50), not {self.clip_percentile}")

    def _check_trials(self) -> None:
        """One-line errors for ``trials`` that cannot run (the subsets are checked against the files later)."""
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 2:
            raise ConfigError(f"trials must be an integer >= 2 (a spread needs two trials), not {self.trials!r}")
        if self.quantized is not None:
            raise ConfigError("--trials recalibrates; with --quantized nothing is calibrated: drop --trials")
        if not 0 < self.trial_fraction < 1:
            raise ConfigError(f"trial_fraction must be in (0, 1), not {self.trial_fraction!r}")

    def replace(self, **changes) -> AuditConfig:
        return replace(self, **changes)


def batch_axes(value) -> dict[str, int | None]:
    """``{input name: axis or None}`` from a mapping whose values are integers, None or
    ``"none"`` (the input is fed as it is)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"batch_axis must map input names to axes, e.g. {{'state': 1}}, not {value!r}")
    out = {}
    for k, v in value.items():
        if isinstance(v, str) and v.strip().lower() == "none":
            v = None
        if not isinstance(k, str) or not (v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))):
            raise ConfigError(f"batch_axis maps input names to an integer axis or none, not {k!r}: {v!r}")
        out[k] = None if v is None else int(v)
    return out


def audit_config(model, calib, eval=None, labels=None, **options) -> AuditConfig:
    """An :class:`AuditConfig` from keywords: any field of :class:`AuditConfig` or of
    :class:`QuantConfig` (``weight_type="int8"``, ``per_channel=True``, ...), or ``quant=``
    a whole :class:`QuantConfig`. An unknown keyword is a :class:`ConfigError` naming
    the closest valid one."""
    audit_keys = {f.name for f in fields(AuditConfig)} - {"model", "calib", "eval", "labels"}
    quant_keys = {f.name for f in fields(QuantConfig)}
    unknown = sorted(set(options) - audit_keys - quant_keys)
    if unknown:
        valid = sorted(audit_keys | quant_keys)
        hint = difflib.get_close_matches(unknown[0], valid, n=1)
        raise ConfigError(
            f"unknown audit option {unknown[0]!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid options: {', '.join(valid)}"
        )
    quant_changes = {k: options.pop(k) for k in list(options) if k in quant_keys}
    if "exclude" in quant_changes:
        quant_changes["exclude"] = tuple(quant_changes["exclude"])
    quant = options.pop("quant", None) or QuantConfig()
    methods = calibrate_methods(quant_changes.get("calibrate_method", quant.calibrate_method))
    if len(methods) > 1:
        runs = method_runs(quant, methods, quant_changes)
        return AuditConfig(model=model, calib=calib, eval=eval, labels=labels, quant=runs[0], runs=runs, **options)
    if quant_changes:
        quant = replace(quant, **{**quant_changes, "calibrate_method": methods[0]})
    return AuditConfig(model=model, calib=calib, eval=eval, labels=labels, quant=quant, **options)


def calibrate_methods(value) -> tuple[str, ...]:
    """The calibration methods of ``value``: one name, a comma list (``"percentile,entropy"``) or a
    list of names; a repeated method is a :class:`ConfigError` (one run per method)."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    methods = tuple(m.strip() if isinstance(m, str) else m for m in items)
    if not methods or "" in methods:
        raise ConfigError(f"calibrate_method needs a method name in each item, not {value!r}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise ConfigError(f"calibrate_method lists {repeated[0]} twice: each method is one run of the audit")
    return methods


def method_runs(quant: QuantConfig, methods: tuple[str, ...], changes: dict) -> tuple[QuantConfig, ...]:
    """One :class:`QuantConfig` per method of a multi-run audit: ``quant`` with ``changes``, each calibration
    option given only to the methods that take it; one that no method takes is a :class:`ConfigError`."""
    options = {k: changes.get(k, getattr(quant, k)) for k in CALIBRATION_OPTIONS}
    options = {k: v for k, v in options.items() if v is not None}
    for m in methods:
        if m not in CALIBRATE_METHODS:
            raise ConfigError(f"calibrate_method must be one of {', '.join(CALIBRATE_METHODS)}, not {m!r}")
    for key in options:
        if not any(key in CALIBRATION_DEFAULTS[m] for m in methods):
            users = [m for m in CALIBRATE_METHODS if key in CALIBRATION_DEFAULTS[m]]
            raise ConfigError(
                f"{key} applies to none of the methods {', '.join(methods)} (only to {' and '.join(users)}); "
                f"remove it or add {users[0]} to --calibrate-method"
            )
    base = {k: v for k, v in changes.items() if k not in CALIBRATION_OPTIONS and k != "calibrate_method"}
    base.update(dict.fromkeys(CALIBRATION_OPTIONS))
    return tuple(
        replace(
            quant, **{**base, **{k: v for k, v in options.items() if k in CALIBRATION_DEFAULTS[m]}}, calibrate_method=m
        )
        for m in methods
    )
