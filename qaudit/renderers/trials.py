"""The calibration trials' cells and lines, shared by the terminal, Markdown and HTML renderers.

Every number is the ``trials`` section's (:func:`qaudit.trials.summarize`), written by the
rule of its metric (:data:`qaudit.renderers.numbers.METRIC_RULES`).
"""

from __future__ import annotations

from qaudit.renderers import numbers as num
from qaudit.trials import OUTPUT_METRICS, lookup

#: the column titles of the outputs' trial table, one per :data:`qaudit.trials.OUTPUT_METRICS`
OUTPUT_TITLES = ("SQNR dB", "QCE", "top-1 agree %", "acc drop %")


def _std(f, std: float) -> str:
    """The std by its metric's rule, or 3 significant digits when that rule would round a spread to 0."""
    text = f(std)
    return num.sig(std, 2) if std and not any(ch in "123456789" for ch in text) else text


def spread(s: dict | None, metric: str) -> str:
    """``"31.2 ±0.4 (30.5)"`` for a layer cell: mean ±std (min); ``-`` without statistics."""
    if not s or s.get("mean") is None:
        return num.MISSING
    f = num.METRIC_RULES.get(metric, num.sig)
    return f"{f(s['mean'])} ±{_std(f, s['std'])} ({f(s['min'])})"


def span(s: dict | None, metric: str) -> str:
    """``"37.1 ± 0.4 [36.6, 37.5]"``: mean ± std [min, max]; ``-`` without statistics."""
    if not s or s.get("mean") is None:
        return num.MISSING
    f = num.METRIC_RULES.get(metric, num.sig)
    return f"{f(s['mean'])} ± {_std(f, s['std'])} [{f(s['min'])}, {f(s['max'])}]"


def paired_cell(p: dict | None, base: str) -> str:
    """``"-2.8 ± 2.7 dB vs percentile (higher in 1, lower in 7 of 8)"``: a run's difference from
    ``base`` over the same trials."""
    if not p or p.get("mean") is None:
        return num.MISSING
    return (
        f"{num.db(p['mean'])} ± {_std(num.db, p['std'])} dB vs {base} "
        f"(higher in {p['higher']}, lower in {p['lower']} of {p['n']})"
    )


def run_cells(row: dict, first: str) -> list[str]:
    """A runs-table row's trial cells (:func:`qaudit.runs.summary_rows`): the output SQNR over the
    trials, and the difference from the first run on the same subsets."""
    if "trials_output" not in row:
        return [num.MISSING, num.MISSING]
    paired = paired_cell(row["output_sqnr_paired"], first) if "output_sqnr_paired" in row else "(the reference)"
    return [span(row["output_sqnr_trials"], "sqnr_db"), paired]


def layer_cell(trials: dict | None, name: str, metric: str) -> str:
    return spread(lookup(trials, "layers", name, metric), metric)


def output_cells(trials: dict, name: str) -> list[str]:
    """One output's cells, in the order of :data:`OUTPUT_TITLES`."""
    return [span(lookup(trials, "outputs", name, m), m) for m in OUTPUT_METRICS]


def heading(trials: dict) -> str:
    """What the trials were, in one line."""
    n, files = trials.get("n"), trials.get("files") or []
    subsets = trials.get("subsets") or [[]]
    fraction = trials.get("fraction")
    return (
        f"calibration trials: {n} random subsets of {len(subsets[0])} of {len(files)} calibration files "
        f"(seed {trials.get('seed')}"
        + (f", --trial-fraction {fraction:g}" if isinstance(fraction, (int, float)) else "")
        + f"); mean ± std (ddof={trials.get('std_ddof', 1)}) [min, max] over the trials; the main table "
        "and the gates are the full-data audit's"
    )


def subset_lines(trials: dict) -> list[str]:
    """``trial i: file, file, ...`` for every trial."""
    files = trials.get("files") or []
    return [
        f"trial {i}: " + ", ".join(files[k] if 0 <= k < len(files) else str(k) for k in s)
        for i, s in enumerate(trials.get("subsets") or [])
    ]


__all__ = [
    "OUTPUT_TITLES",
    "heading",
    "layer_cell",
    "output_cells",
    "paired_cell",
    "run_cells",
    "span",
    "spread",
    "subset_lines",
]
