"""What ``qaudit fix`` hands back: the recipe (TOML for qaudit), the same as ORT arguments (JSON).

:func:`recipe_toml` writes a config file for ``qaudit MODEL --config recipe.toml --calib ...
--eval ...``: the quantization settings, the nodes left in float (``exclude``), the per-tensor
overrides, the target gates, the preprocessing of image and WAV folders and the class names
file; never a data path. :func:`ort_arguments` writes the keyword
arguments of ONNX Runtime's ``quantize_static`` that reproduce the fixed model from the
prepared graph (``--prepared-model``): ``nodes_to_exclude``, ``extra_options`` with the
``TensorQuantOverrides`` (explicit ``rmin``/``rmax`` where a range was changed), every other
argument, and the calibration ranges as ORT's own calibration cache. JSON has no numpy
arrays, sets or enums: the decoding is written into the file (``decoding``) and in docs/remedy.md.
"""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path

import numpy as np

ORT_ARGS_FORMAT = {"name": "qaudit-ort-arguments", "version": 1}
#: settings a recipe carries besides the quantization and the gates, when set (none is a data path)
CARRIED = ("class_outputs", "label_output", "batch_size", "batch_axis", "max_samples", "clip_percentile", "isolated")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _threshold(v) -> str:
    return '"off"' if v is None else _toml_value(float(v))


def recipe_toml(quant, gates, values: dict, comment: str = "", preprocess: dict | None = None) -> str:
    """The recipe: ``quant`` (a QuantConfig: settings, exclusions, overrides), the active
    threshold gates of ``gates`` (a GateConfig), the :data:`CARRIED` settings of ``values``
    (the resolved option values) that differ from the defaults, ``values``' class names file
    (absolute) when given, and ``preprocess`` (the report's ``data.preprocess``: how image or
    WAV folders were read) as a ``[preprocess]`` table of explicit keys."""
    from qaudit.cli.settings import OPTIONS_BY_NAME
    from qaudit.gate import GATES
    from qaudit.pipeline.sources.preprocess import keys_of

    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines += [
        f"format = {_toml_value(quant.format)}",
        f"activation_type = {_toml_value(quant.activation_type)}",
        f"weight_type = {_toml_value(quant.weight_type)}",
        f"per_channel = {_toml_value(quant.per_channel)}",
        f"calibrate_method = {_toml_value(quant.calibrate_method)}",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in quant.calibration().items()]
    lines.append(f"exclude = {_toml_value(list(quant.exclude))}")
    for key in CARRIED:
        v = values.get(key)
        if v is not None and v != OPTIONS_BY_NAME[key].default:
            lines.append(f"{key} = {_toml_value(list(v) if isinstance(v, tuple) else v)}")
    if values.get("class_names") is not None:  # paths in a config file are relative to it: absolute here
        lines.append(f"class_names = {_toml_value(str(Path(values['class_names']).resolve()))}")
    if preprocess:
        lines += ["", "[preprocess]"] + [f"{k} = {_toml_value(v)}" for k, v in keys_of(preprocess).items()]
    for scope, globs in (quant.overrides or {}).items():
        for glob, settings in globs.items():
            lines += ["", f"[overrides.{scope}.{json.dumps(glob)}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    lines += ["", "[gates]"]
    if gates.skip_missing:
        lines.append("skip_missing = true")
    scoped: dict[tuple[str, str], list[str]] = {}
    for g in GATES:
        t = gates.threshold(g.name)
        if g.kind != "threshold" or not t.active:
            continue
        if t.default is not None:
            lines.append(f"{g.name} = {_threshold(t.default)}")
        for glob, v in t.overrides:
            scoped.setdefault(("layers" if g.scope == "layer" else "outputs", glob), []).append(
                f"{g.name} = {_threshold(v)}"
            )
    for (scope, glob), entries in scoped.items():
        lines += ["", f"[gates.{scope}.{json.dumps(glob)}]", *entries]
    return "\n".join(lines) + "\n"


def _jsonable(v):
    """ORT's argument values as JSON: enums by name, numpy scalars and arrays as numbers, sets as sorted lists."""
    if isinstance(v, enum.Enum):
        return v.name
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (set, frozenset)):
        return sorted(_jsonable(x) for x in v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.reshape(-1)[0].item()) if v.size == 1 else [_jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"a non-finite number {v} in ORT's arguments")
    return v


DECODING = {
    "quant_format": "onnxruntime.quantization.QuantFormat[name]",
    "activation_type, weight_type, quant_type": "onnxruntime.quantization.QuantType[name]",
    "calibrate_method": "onnxruntime.quantization.CalibrationMethod[name]",
    "rmin, rmax, scale": "numpy.array(value, dtype=numpy.float32)",
    "zero_point": "numpy.array(value, dtype=the integer type of its quant_type)",
    "recv_nodes": "set(value)",
    "calibration_cache": "write it to a file as JSON and pass the path as calibration_cache_path",
}


def ort_arguments(quant, also_exclude, tensor_overrides, ranges, prepared_sha256: str) -> dict:
    """``quantize_static``'s arguments for the fixed model (:func:`qaudit.pipeline.quantize.static_arguments`)
    and the calibration ranges (ORT's ``TensorsData`` cache payload), as JSON values."""
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    from qaudit.pipeline.quantize import static_arguments

    args = static_arguments(quant, also_exclude, tensor_overrides)
    cache = json.loads(json.dumps({**ranges.to_dict(), "smooth_quant": False}, cls=CalibrationCacheEncoder))
    return {
        "format": ORT_ARGS_FORMAT,
        "prepared_model_sha256": prepared_sha256,
        "quantize_static": _jsonable(args),
        "calibration_cache": cache,
        "decoding": DECODING,
    }


def decode_ort_arguments(doc: dict, weights=()) -> dict:
    """``quantize_static``'s keyword arguments from :func:`ort_arguments`' JSON, without
    ``calibration_cache_path`` (the caller writes ``doc["calibration_cache"]`` to a file).
    ``weights``: the prepared model's initializer names (a zero point's default type)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    from qaudit.pipeline.overrides import helper_np_type

    def tensor(d: dict, default) -> dict:
        out = {}
        qtype = QuantType[d["quant_type"]] if "quant_type" in d else default
        for k, v in d.items():
            if k == "quant_type":
                out[k] = qtype
            elif k in ("rmin", "rmax", "scale"):
                out[k] = np.array(v, dtype=np.float32)
            elif k == "zero_point":
                name = {QuantType.QUInt8: "uint8", QuantType.QInt8: "int8", QuantType.QUInt16: "uint16"}
                name |= {QuantType.QInt16: "int16", QuantType.QUInt4: "uint4", QuantType.QInt4: "int4"}
                out[k] = np.array(v, dtype=helper_np_type(name[qtype]))
            elif k == "recv_nodes":
                out[k] = set(v)
            elif k == "convert":
                out[k] = tensor(v, qtype)
            else:
                out[k] = v
        return out

    a = dict(doc["quantize_static"])
    a["quant_format"] = QuantFormat[a["quant_format"]]
    a["activation_type"] = QuantType[a["activation_type"]]
    a["weight_type"] = QuantType[a["weight_type"]]
    a["calibrate_method"] = CalibrationMethod[a["calibrate_method"]]
    extra = dict(a["extra_options"])
    if "TensorQuantOverrides" in extra:
        extra["TensorQuantOverrides"] = {
            t: [tensor(d, a["weight_type"] if t in weights else a["activation_type"]) for d in entries]
            for t, entries in extra["TensorQuantOverrides"].items()
        }
    a["extra_options"] = extra
    return a


__all__ = ["DECODING", "decode_ort_arguments", "ort_arguments", "recipe_toml"]
