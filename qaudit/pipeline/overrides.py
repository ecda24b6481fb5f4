"""Per-tensor quantization overrides: qaudit's table -> ORT's ``TensorQuantOverrides``.

The table (``[tool.qaudit.overrides]``, ``--overrides FILE.toml``, ``audit(overrides=...)``)
has two sub-tables, so that a tensor glob is never mistaken for a node name (real tensor
names contain ``:`` and ``=``, which rules out a prefix syntax)::

    [tool.qaudit.overrides.tensors."/conv1/Conv_output_0"]
    type = "uint16"
    [tool.qaudit.overrides.nodes."/head/*"]      # each matching node's output tensors
    type = "uint16"
    [tool.qaudit.overrides.tensors."fc.weight"]
    per_channel = true
    axis = 0

:func:`check_table` validates the table's shape and keys (no model needed);
:func:`resolve` expands the globs on the graph ORT quantizes and returns ORT's dict,
made consistent by ORT's own ``MixedPrecisionTensorQuantOverridesFixer`` when an
activation's type differs from the default one (converted edges, no type clash).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
import numbers
from collections.abc import Mapping

import numpy as np

from qaudit.errors import ConfigError

SCOPES = ("tensors", "nodes")
#: each key and what it takes
KEYS = {
    "type": "a quantized type",
    "per_channel": "true or false",
    "axis": "an integer axis",
    "symmetric": "true or false",
    "reduce_range": "true or false",
    "rmin": "a finite number",
    "rmax": "a finite number",
    "scale": "a positive finite number",
    "zero_point": "an integer",
}
_BOOLS = ("per_channel", "symmetric", "reduce_range")
_RANGE = ("symmetric", "reduce_range", "rmin", "rmax")


def _bad(where: str, msg: str) -> ConfigError:
    return ConfigError(f"overrides {where}: {msg}")


def check_table(table, where: str = "") -> dict:
    """The table normalized to ``{"tensors": {glob: settings}, "nodes": {glob: settings}}``;
    a wrong shape, an unknown key or a bad value is a :class:`ConfigError`."""
    from qaudit.options import WEIGHT_TYPES

    if table is None:
        return {}
    suffix = f" in {where}" if where else ""
    if not isinstance(table, Mapping):
        raise ConfigError(f"overrides{suffix} must be a table with sub-tables 'tensors' and/or 'nodes'")
    out: dict = {}
    for scope, globs in table.items():
        if scope not in SCOPES:
            close = difflib.get_close_matches(str(scope), SCOPES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown key '{scope}' in overrides{suffix}{hint}: the table holds 'tensors' (tensor-name globs) "
                "and 'nodes' (node-name globs), e.g. [overrides.tensors.\"/conv1/*\"]"
            )
        if not isinstance(globs, Mapping) or not all(isinstance(s, Mapping) for s in globs.values()):
            raise ConfigError(
                f'overrides.{scope}{suffix} must hold tables keyed by glob, e.g. [overrides.{scope}."/conv1/*"]'
            )
        for glob, settings in globs.items():
            w = f'{scope}."{glob}"{suffix}'
            if not isinstance(glob, str) or not glob:
                raise ConfigError(f"an empty glob in overrides.{scope}{suffix}; name a tensor or a glob like '/fc2/*'")
            s = {}
            for key, value in settings.items():
                if key not in KEYS:
                    close = difflib.get_close_matches(key, KEYS, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(KEYS)}"
                    raise _bad(w, f"unknown key '{key}'{hint}")
                ok = {
                    "type": isinstance(value, str) and value in WEIGHT_TYPES,
                    "axis": isinstance(value, numbers.Integral) and not isinstance(value, bool),
                    "zero_point": isinstance(value, numbers.Integral) and not isinstance(value, bool),
                }.get(key)
                if key in _BOOLS:
                    ok = isinstance(value, bool)
                elif key in ("rmin", "rmax", "scale"):
                    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                    ok = ok and (key != "scale" or value > 0)
                if not ok:
                    expected = KEYS[key] + (f" ({', '.join(WEIGHT_TYPES)})" if key == "type" else "")
                    raise _bad(w, f"{key} must be {expected}, not {value!r}")
                s[key] = float(value) if key in ("rmin", "rmax", "scale") else value
            if ("scale" in s) != ("zero_point" in s):
                raise _bad(w, "scale and zero_point go together: give both, or use rmin/rmax")
            if "scale" in s and set(s) & set(_RANGE):
                clash = ", ".join(sorted(set(s) & set(_RANGE)))
                raise _bad(w, f"{clash} cannot be combined with scale/zero_point (they fix the encoding)")
            if "rmin" in s and "rmax" in s and s["rmin"] > s["rmax"]:
                raise _bad(w, f"rmin {s['rmin']:g} is above rmax {s['rmax']:g}")
            if "axis" in s and not s.get("per_channel"):
                raise _bad(w, "axis applies to per-channel quantization: add per_channel = true")
            if not s:
                raise _bad(w, f"no settings; give at least one of {', '.join(KEYS)}")
            out.setdefault(scope, {})[glob] = s
    return out


def _did_you_mean(glob: str, names) -> str:
    close = difflib.get_close_matches(glob, list(names), n=1, cutoff=0.4)
    return f" (did you mean '{close[0]}'?)" if close else ""


def expand(table: Mapping, model) -> dict[str, dict]:
    """``{tensor: settings}``: node globs first (a node's outputs), then tensor globs, later
    entries refining earlier ones. A glob matching nothing is a :class:`ConfigError`."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    tensors = [i.name for i in g.input if i.name not in inits] + [o for n in g.node for o in n.output if o]
    tensors += sorted(inits)
    nodes = {n.name: [o for o in n.output if o] for n in g.node if n.name}
    applied: dict[str, dict] = {}
    for scope, names in (("nodes", list(nodes)), ("tensors", tensors)):
        for glob, settings in table.get(scope, {}).items():
            hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
            if not hits:
                what = "node name" if scope == "nodes" else "tensor name"
                other = tensors if scope == "nodes" else list(nodes)
                also = any(fnmatch.fnmatchcase(n, glob) for n in other)
                hint = f" ('{glob}' matches a {'tensor' if scope == 'nodes' else 'node'}: move it to overrides."
                hint += f"{'tensors' if scope == 'nodes' else 'nodes'})" if also else ""
                raise ConfigError(
                    f"overrides.{scope}: '{glob}' matches no {what} of the model"
                    + (hint if also else _did_you_mean(glob, names))
                )
            for name in hits:
                for t in nodes[name] if scope == "nodes" else [name]:
                    applied.setdefault(t, {}).update(settings)
    return applied


def helper_np_type(qtype: str):
    """The numpy type of a quantized type's zero point (4-bit: ml_dtypes' int4/uint4, as onnx maps it)."""
    from onnx import TensorProto, helper

    return helper.tensor_dtype_to_np_dtype(getattr(TensorProto, qtype.upper()))


def _weight_axis(model, name: str) -> int:
    """The channel axis ORT uses for a weight: its consumer's output channels."""
    for n in model.graph.node:
        if name in n.input[1:2]:
            if n.op_type == "ConvTranspose":
                return 1
            if n.op_type == "MatMul":
                return -1
            if n.op_type == "Gemm":
                trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
                return 0 if trans_b else 1
    return 0


def resolve(table: Mapping, model, cfg) -> tuple[dict, dict[str, dict]]:
    """``(ORT's TensorQuantOverrides, {tensor: settings applied})`` for ``model`` (the graph
    handed to ``quantize_static``) under ``cfg`` (a :class:`~qaudit.options.QuantConfig`)."""
    from onnxruntime.quantization import QuantType

    from qaudit.options import ACTIVATION_TYPES, INTEGER_RANGES, QDQ_ONLY_TYPES

    if not table:
        return {}, {}
    applied = expand(table, model)
    inits = {i.name for i in model.graph.initializer}
    qtypes = dict(
        zip(
            INTEGER_RANGES,
            (QuantType.QUInt8, QuantType.QInt8, QuantType.QUInt16, QuantType.QInt16, QuantType.QUInt4, QuantType.QInt4),
        )
    )
    ort: dict[str, list[dict]] = {}
    for t, s in applied.items():
        weight = t in inits
        where = f"tensor '{t}'"
        if "type" in s:
            if not weight and s["type"] not in ACTIVATION_TYPES:
                raise ConfigError(
                    f"overrides: {where} is an activation; type {s['type']} is a weight type only "
                    f"(activations: {', '.join(ACTIVATION_TYPES)})"
                )
            if cfg.format == "qoperator" and s["type"] in QDQ_ONLY_TYPES:
                raise ConfigError(
                    f"overrides: {where} type {s['type']} exists only in the QDQ format: use --format qdq"
                )
        if not weight:
            for key in ("per_channel", "axis", "reduce_range"):
                if key in s:
                    raise ConfigError(f"overrides: {key} applies to weights; {where} is an activation")
        d: dict = {}
        if "type" in s:
            d["quant_type"] = qtypes[s["type"]]
        for key in ("symmetric", "reduce_range"):
            if key in s:
                d[key] = s[key]
        # ORT computes with numpy arrays (compute_scale_zp reads rmin.dtype): float32 values, the
        # zero point in the tensor's integer type
        for key in ("rmin", "rmax", "scale"):
            if key in s:
                d[key] = np.array(s[key], dtype=np.float32)
        if "zero_point" in s:
            qtype = s.get("type") or (cfg.weight_type if weight else cfg.activation_type)
            lo, hi = INTEGER_RANGES[qtype]
            if not lo <= s["zero_point"] <= hi:
                raise ConfigError(f"overrides: {where} zero_point {s['zero_point']} is outside {qtype}'s [{lo}, {hi}]")
            d["zero_point"] = np.array(s["zero_point"], dtype=helper_np_type(qtype))
        if s.get("per_channel"):
            d["axis"] = s.get("axis", _weight_axis(model, t))
        ort[t] = [d]
    default_act = qtypes[cfg.activation_type]
    mixed = any("quant_type" in d[0] and d[0]["quant_type"] != default_act for t, d in ort.items() if t not in inits)
    if mixed:
        # the fixer takes any entry it finds on a tensor whose producer it moves to another type for a clash
        # (onnxruntime 1.32, docs/ort-quirks.md): it sees only the typed entries; the others' settings
        # (a range, symmetric) are added to its result, on the tensor as produced
        untyped = {t: d[0] for t, d in ort.items() if t not in inits and "quant_type" not in d[0]}
        ort = _fixed({t: d for t, d in ort.items() if t not in untyped}, model, default_act, cfg)
        for t, settings in untyped.items():
            entry = ort.setdefault(t, [{}])[0]
            for key, value in settings.items():
                entry.setdefault(key, value)
    return ort, applied


def _fixed(ort: dict, model, default_act, cfg) -> dict:
    """ORT's mixed-precision fixer (the QNN EP's ``get_qnn_qdq_config`` uses it): the tensors
    around a retyped activation get ``convert`` entries, so every edge has one type."""
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer,
    )
    from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

    helper = TensorQuantOverridesHelper(copy.deepcopy(ort))
    try:
        fixer = MixedPrecisionTensorQuantOverridesFixer.create_from_model(helper, model, default_act)
        fixer.apply(default_act, False)
    except ValueError as e:
        raise ConfigError(f"overrides: ONNX Runtime refuses them: {e}") from None
    return helper.get_dict()


def mark_overrides(rows, applied: Mapping[str, dict], model):
    """Each row whose activation or weight an override set gets ``override``:
    ``{tensor: settings applied}``."""
    from dataclasses import replace

    if not applied:
        return rows
    weights = {n.name: n.input[1] for n in model.graph.node if n.name and len(n.input) > 1}
    out = []
    for r in rows:
        hit = {t: dict(applied[t]) for t in (r.tensor, weights.get(r.name)) if t and t in applied}
        out.append(replace(r, override=hit) if hit else r)
    return tuple(out)


__all__ = ["check_table", "expand", "mark_overrides", "resolve"]
