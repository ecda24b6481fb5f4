"""The fix search: the cheapest change set whose measured outputs pass every output gate.

Cost order (issue 19): first the number of nodes left in float, then the number
of tensors at 16 bits; per-channel weights and another calibration range cost
nothing extra, but are kept only where they are needed. The search, every
step measured with :func:`qaudit.remedy.sensitivity.verify`:

1. the baseline (no change), then each ranked candidate alone;
2. every free change (per-channel, range) that helped alone, all together;
3. the 16-bit changes that helped, added one at a time, most helpful first, until the gates pass;
4. then the nodes in float that helped, the same way;
5. pruning: each change, nodes in float first, then 16-bit tensors, then free changes, is
   taken out again when the gates still pass without it.

When nothing passes, the result is the set with the smallest shortfall measured, and its
failing checks say what limits it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qaudit.remedy.sensitivity import Candidate, Change, Measured, verify

FREE = ("per_channel", "range")


def cost(changes) -> tuple[int, int]:
    """``(nodes in float, tensors at 16 bits)``: the search minimizes it in this order."""
    return sum(c.kind == "float_node" for c in changes), sum(c.kind == "tensor_16bit" for c in changes)


@dataclass(frozen=True)
class SearchResult:
    """The best change set found and how it was found."""

    changes: tuple[Change, ...]
    measured: Measured  # the best set's measurement
    baseline: Measured
    met: bool  # the best set passes every output gate
    candidates: tuple[Candidate, ...]
    trail: tuple[Measured, ...]  # every measurement, in order

    @property
    def n_measured(self) -> int:
        return len(self.trail)

    @property
    def limits(self) -> list[str]:
        """What keeps the best set from the target: its failing checks, in words."""
        if self.met or self.measured.gates is None:
            return [self.measured.error] if self.measured.error else []
        out = []
        for c in self.measured.gates.failures:
            m = "missing" if c.measured is None else f"{c.measured:.4g}"
            out.append(f"{c.gate} on {c.subject or 'the outputs'}: {m} (target {c.comparison} {c.threshold:g})")
        return out


def _order(changes):
    rank = {"float_node": 0, "tensor_16bit": 1, "per_channel": 2, "range": 3}
    return sorted(changes, key=lambda c: (rank[c.kind], c))


def search(ws, cands, executor=None, progress=None) -> SearchResult:
    """Search the cheapest passing change set among ``cands`` (:func:`~qaudit.remedy.sensitivity.candidates`)."""
    trail: list[Measured] = []

    def measure(sets, stage=None):
        if progress is not None and stage:
            progress.stage(stage, len(sets))
        got = verify(ws, sets, executor, progress)
        trail.extend(got)
        return got

    cands = tuple(cands)
    base, *singles = measure([()] + [(c.change,) for c in cands], "fix: measuring candidates")
    if base.passed:
        return SearchResult((), base, base, True, cands, tuple(trail))
    gain = {m.changes[0]: base.shortfall - m.shortfall for m in singles if not m.error}
    helped = [c.change for c in cands if gain.get(c.change, 0.0) > 0]
    helped.sort(key=lambda ch: -gain[ch])
    passing = [m for m in singles if m.passed]
    if passing:  # one change suffices: the cheapest of them, the most margin among equals
        best = min(passing, key=lambda m: (cost(m.changes), m.shortfall))
        current, last = list(best.changes), best
    else:
        current, last = [], base
        free = [c for c in helped if c.kind in FREE]
        if free:
            (last,) = measure([tuple(free)], "fix: free changes")
            current = free if last.shortfall <= base.shortfall else []
            if not current:
                last = base
        for kind in ("tensor_16bit", "float_node"):
            if last.passed:
                break
            steps = [c for c in helped if c.kind == kind]
            if progress is not None and steps:
                progress.stage(f"fix: adding {'16-bit tensors' if kind == 'tensor_16bit' else 'nodes in float'}", None)
            for c in steps:
                (m,) = measure([tuple(current + [c])])
                if m.shortfall < last.shortfall or m.passed:
                    current, last = current + [c], m
                if last.passed:
                    break
    if last.passed and len(current) > 1:
        if progress is not None:
            progress.stage("fix: pruning", len(current))
        for c in _order(current):
            trial = [x for x in current if x != c]
            (m,) = measure([tuple(trial)])
            if m.passed:
                current, last = trial, m
    if not last.passed:  # the smallest shortfall measured
        last = min(trail, key=lambda m: (m.shortfall, cost(m.changes)))
        current = list(last.changes)
    return SearchResult(tuple(_order(current)), last, base, last.passed, cands, tuple(trail))


__all__ = ["SearchResult", "cost", "search"]


@dataclass
class FixResult:
    """``qaudit fix``'s outcome: the audits before and after, the search, the recipe's quantization."""

    before: object  # Report
    after: object  # Report: the full audit of the recipe
    search: SearchResult
    quant: object  # QuantConfig: the recipe
    record: dict  # the after audit's record: prepared graph, ranges, quantize arguments
    alternative: str | None
    seconds: dict


def alternative_method(method: str) -> str:
    """The other calibration whose ranges a ``range`` change takes: minmax, or percentile for minmax."""
    return "percentile" if method == "minmax" else "minmax"


def fix(cfg, gates, progress=None, executor=None, layers=None, hints=()) -> FixResult:
    """Audit ``cfg``, search the cheapest change set meeting ``gates``' output gates, and audit the
    result again (the verification; every gate of ``gates`` applies to it). ``cfg.output_model``
    receives the fixed model. ``hints``: the causes' remedies, measured first."""
    import tempfile
    import time
    from pathlib import Path

    from qaudit.options import QuantConfig
    from qaudit.pipeline.audit import audit
    from qaudit.remedy.sensitivity import DEFAULT_LAYERS, _ranges_loader, candidates, quant_of, workspace

    t0 = time.perf_counter()
    alt = alternative_method(cfg.quant.calibrate_method)
    record: dict = {"calibrate": [QuantConfig(calibrate_method=alt)]}
    before = audit(cfg.replace(output_model=None), progress, record=record)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qaudit-fix-") as tmp:
        ws = workspace(record, cfg, gates, Path(tmp) / "ws", alt, progress)
        cands = candidates(before, record["folded"], hints, alt, layers or DEFAULT_LAYERS)
        found = search(ws, cands, executor, progress)
        quant = quant_of(cfg.quant, found.changes, _ranges_loader(ws))
    del record
    t2 = time.perf_counter()
    after_record: dict = {}
    after = audit(cfg.replace(quant=quant), progress, record=after_record)
    t3 = time.perf_counter()
    seconds = {"before": t1 - t0, "search": t2 - t1, "after": t3 - t2, "total": t3 - t0}
    return FixResult(before, after, found, quant, after_record, alt, seconds)


__all__ += ["FixResult", "fix"]
