"""Calibration trials: how much a report's numbers move when the calibration data changes.

``--trials N`` repeats the calibration on N random subsets of the calibration files
(``--trial-fraction``, default half of them, drawn without replacement, reproducible from
``--seed``) and reports, for every layer's SQNR (accumulated and isolated) and every
output metric, the mean, standard deviation (``ddof=1``), minimum and maximum over the
trials (docs/metrics.md, "Calibration trials"). The main report, its table and its gates
stay the full-data audit's; the trials are an extra section, ``trials`` (format 5).

This module plans the subsets and computes the statistics from the trials' reports; the
pipeline side (one trial from a subset, the executors) is :mod:`qaudit.pipeline.trials`.
Like :mod:`qaudit.report`, it imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qaudit.errors import ConfigError

#: the layer metrics the trials summarize (a report's ``layers[]`` fields)
LAYER_METRICS = ("sqnr_db", "sqnr_isolated_db")
#: the output metrics the trials summarize (a report's ``outputs[]`` fields)
OUTPUT_METRICS = ("sqnr_db", "qce", "top1_agreement", "acc_drop_pct")
#: the degrees of freedom of the standard deviation: the sample standard deviation
STD_DDOF = 1
#: fewer calibration files than this and the note says the spread rests on few files
FEW_FILES = 8


@dataclass(frozen=True)
class Plan:
    """The trials' subsets: ``subsets[i]`` holds the indices (into ``names``, the calibration
    files in the order the audit reads them) of the files trial ``i`` calibrates on."""

    seed: int
    fraction: float
    names: tuple[str, ...]
    subsets: tuple[tuple[int, ...], ...]

    @property
    def per_trial(self) -> int:
        return len(self.subsets[0])

    def notes(self) -> list[str]:
        n, k = len(self.names), self.per_trial
        distinct = math.comb(n, k)
        out = []
        if n < FEW_FILES:
            out.append(
                f"only {n} calibration files: each trial calibrates on {k} of them, so the spread measures how "
                f"the report moves between {distinct} possible subsets, not how it would move with new data; "
                "split the calibration data into more files for a finer estimate"
            )
        drawn = len(set(self.subsets))
        if drawn < len(self.subsets):
            out.append(f"{len(self.subsets)} trials drew {drawn} distinct subsets (of {distinct} possible)")
        return out


def plan(names, trials: int, seed: int = 0, fraction: float = 0.5) -> Plan:
    """Draw ``trials`` subsets of ``floor(fraction * len(names))`` files each, without replacement
    within a subset, from ``numpy.random.default_rng(seed)``; each subset in reading order.
    Fewer than 2 trials, or subsets of no file or of every file, is a :class:`ConfigError`."""
    names = tuple(names)
    if trials < 2:
        raise ConfigError(f"--trials {trials}: a spread needs at least 2 trials; give --trials 2 or more (or none)")
    if not 0 < fraction < 1:
        raise ConfigError(f"--trial-fraction must be in (0, 1), not {fraction!r}")
    k = math.floor(fraction * len(names))
    if k < 1:
        raise ConfigError(
            f"--trial-fraction {fraction:g} of {len(names)} calibration file(s) is less than 1 file: trials draw "
            "whole files; give more calibration files (one sample or batch each) or a larger --trial-fraction"
        )
    if k >= len(names):
        raise ConfigError(
            f"--trial-fraction {fraction:g} of {len(names)} calibration files is all of them: every trial would "
            "calibrate on the full data; give a smaller --trial-fraction or more calibration files"
        )
    rng = np.random.default_rng(seed)
    subsets = tuple(tuple(int(i) for i in np.sort(rng.choice(len(names), k, replace=False))) for _ in range(trials))
    return Plan(seed, fraction, names, subsets)


def stats(values) -> dict:
    """``{"mean", "std", "min", "max", "n", "values"}`` of one metric over the trials (``None``:
    not measured in that trial). ``std`` is numpy's with ``ddof=1``; every statistic is ``None``
    when fewer than two trials measured a finite value, or when one measured no error at all
    (an SQNR of +inf: no finite mean), with the ``reason``."""
    vals = [None if v is None else float(v) for v in values]
    got = [v for v in vals if v is not None]
    out = {"mean": None, "std": None, "min": None, "max": None, "n": len(got), "values": vals}
    if any(not math.isfinite(v) for v in got):
        out["reason"] = f"{sum(not math.isfinite(v) for v in got)} of {len(vals)} trials measured no error (+inf)"
        out["values"] = [v if v is None or math.isfinite(v) else None for v in vals]
        return out
    if len(got) < 2:
        out["reason"] = f"measured in {len(got)} of {len(vals)} trials: a spread needs two"
        return out
    a = np.asarray(got, dtype=np.float64)
    out.update(mean=float(a.mean()), std=float(a.std(ddof=STD_DDOF)), min=float(a.min()), max=float(a.max()))
    return out


def summarize(reports, p: Plan, seconds: float | None = None) -> dict:
    """The ``trials`` section of the main report from the trials' reports (in trial order):
    the plan, and :func:`stats` of every metric of every layer and output of the main table."""

    def rows(attr):
        names = list(dict.fromkeys(r.name for rep in reports for r in getattr(rep, attr)))
        by = [{r.name: r for r in getattr(rep, attr)} for rep in reports]
        metrics = LAYER_METRICS if attr == "layers" else OUTPUT_METRICS
        return [
            {
                "name": name,
                **{m: stats([getattr(b[name], m) if name in b else None for b in by]) for m in metrics},
            }
            for name in names
        ]

    return {
        "n": len(p.subsets),
        "seed": p.seed,
        "fraction": p.fraction,
        "files": list(p.names),
        "subsets": [list(s) for s in p.subsets],
        "samples": [r.data.get("n_calib") for r in reports],
        "std_ddof": STD_DDOF,
        "seconds": seconds,
        "notes": p.notes(),
        "layers": rows("layers"),
        "outputs": rows("outputs"),
    }


def check(section, where: str = "trials") -> dict | None:
    """A ``trials`` section read from JSON, its shape checked (a ``ValueError`` naming the field)."""
    if section is None:
        return None

    def need(d, key, tp, at):
        if not isinstance(d, dict) or key not in d:
            raise ValueError(f"{at} has no '{key}'")
        if not isinstance(d[key], tp) or isinstance(d[key], bool):
            raise ValueError(f"{at}.{key} has the wrong type")
        return d[key]

    need(section, "n", int, where)
    need(section, "subsets", list, where)
    for kind, metrics in (("layers", LAYER_METRICS), ("outputs", OUTPUT_METRICS)):
        for i, row in enumerate(need(section, kind, list, where)):
            at = f"{where}.{kind}[{i}]"
            need(row, "name", str, at)
            for m in metrics:
                s = need(row, m, dict, at)
                for k in ("mean", "std", "min", "max"):
                    if s.get(k) is not None and (isinstance(s[k], bool) or not isinstance(s[k], (int, float))):
                        raise ValueError(f"{at}.{m}.{k} must be a number or null")
    return section


def paired(base: dict | None, other: dict | None, kind: str, name: str, metric: str) -> dict | None:
    """``other − base`` trial by trial, for two reports' ``trials`` drawn on the same subsets (the same
    files, seed and fraction): :func:`stats` of the differences, plus ``higher`` and ``lower``, how many
    trials ``other`` measured above and below ``base``; ``None`` when the subsets differ or a side lacks it."""
    if not base or not other or base.get("subsets") != other.get("subsets") or base.get("files") != other.get("files"):
        return None
    a, b = lookup(base, kind, name, metric), lookup(other, kind, name, metric)
    if not a or not b:
        return None
    diffs = [
        None if x is None or y is None else y - x for x, y in zip(a.get("values", ()), b.get("values", ()), strict=True)
    ]
    out = stats(diffs)
    out["higher"] = sum(d is not None and d > 0 for d in diffs)
    out["lower"] = sum(d is not None and d < 0 for d in diffs)
    return out


def lookup(section: dict | None, kind: str, name: str, metric: str) -> dict | None:
    """The statistics of ``metric`` for layer or output ``name`` (``kind``: "layers" or "outputs"), or None."""
    if not section:
        return None
    for row in section.get(kind, ()):
        if row.get("name") == name:
            return row.get(metric)
    return None


__all__ = [
    "LAYER_METRICS",
    "OUTPUT_METRICS",
    "STD_DDOF",
    "Plan",
    "check",
    "lookup",
    "paired",
    "plan",
    "stats",
    "summarize",
]
