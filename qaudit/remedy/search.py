"""The fix search: the cheapest change set whose measured outputs pass every output gate.

Cost order (issue 19): first the number of nodes left in float, then the number
of tensors at 16 bits; per-channel weights and another calibration range cost
nothing extra, but are kept only where they are needed. The search, every
step measured with :func:`qaudit.remedy.sensitivity.verify`:

1. the baseline (no change);
2. every free and 16-bit candidate together, and when that fails every candidate (nodes in float too);
3. pruning a passing set: the nodes in float first, then the 16-bit tensors, then the free
   changes are taken out, a whole group at a time, halving a group whose removal breaks a
   gate, down to single changes; a change stays only when the gates fail without it.

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
    pruned: bool = True  # False: the budget stopped the pruning (the set passes but may not be minimal)

    @property
    def n_measured(self) -> int:
        return len(self.trail)

    @property
    def errors(self) -> list[str]:
        """Why change sets could not be measured (ORT refused to quantize or run them), one line each."""
        return [m.error for m in self.trail if m.error]

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


#: measurements the search makes at most by default (the baseline included)
DEFAULT_BUDGET = 24
#: candidates of the first tier: about the noisiest 8 layers' (each tier doubles it)
FIRST_TIER = 24


def search(ws, cands, executor=None, progress=None, budget: int = DEFAULT_BUDGET) -> SearchResult:
    """Search the cheapest passing change set among ``cands`` (ranked, best first:
    :func:`~qaudit.remedy.sensitivity.candidates`).

    Top down, so that a remedy spread over many layers costs as few measurements as one in a
    single layer: the baseline; then for growing tiers of the ranking (the first
    :data:`FIRST_TIER` candidates, twice as many, ... all of them) every free and 16-bit
    candidate of the tier together and, if that fails, every candidate of the tier. From the
    first passing set, changes are taken out in cost order (nodes in float, then 16-bit
    tensors, then free changes), a whole group at a time and halving a group whose removal
    fails, down to single changes: about ``2 k log2(n / k)`` measurements for ``k`` needed
    changes among ``n``. ``budget`` caps the measurements: pruning stops there, and the set
    kept still passes (:attr:`SearchResult.pruned` is then False). Each removal tried is a
    measured sensitivity (:attr:`SearchResult.trail`).
    """
    trail: list[Measured] = []
    memo: dict[frozenset, Measured] = {}
    asked: set[frozenset] = set()
    # an executor measuring several sets at once (a Ray cluster's CPUs): the sets the next step may ask
    # for are measured together with the one it asks for; the trail, the budget and the result are the
    # one-at-a-time search's (a set is in the trail when the search asks for it)
    width = getattr(executor, "width", 1)

    def fetch(sets) -> None:
        todo: dict[frozenset, tuple] = {}
        for s in sets[: max(1, width)]:
            key = frozenset(s)
            if key not in memo and key not in todo:
                todo[key] = tuple(_order(s))
        for key, m in zip(todo, verify(ws, list(todo.values()), executor, progress), strict=True):
            memo[key] = m

    def measure(changes, ahead=()) -> Measured:
        key = frozenset(changes)
        if key not in memo:
            fetch([changes, *ahead] if width > 1 else [changes])
        if key not in asked:
            asked.add(key)
            trail.append(memo[key])
        return memo[key]

    cands = tuple(cands)
    every = [c.change for c in cands]
    if progress is not None:
        progress.stage("fix: measuring change sets", None)
    size, sizes = FIRST_TIER, []
    while size < len(every):
        sizes.append(size)
        size *= 2
    sizes.append(len(every))

    def trials_of(n: int) -> list:
        tier = every[:n]
        cheap = [c for c in tier if c.kind != "float_node"]
        return [t for t in ([cheap, tier] if len(cheap) < len(tier) else [tier]) if t]

    base = measure([], trials_of(sizes[0]))
    if base.passed:
        return SearchResult((), base, base, True, cands, tuple(trail))
    current, last = [], base
    for n in sizes:
        trials = trials_of(n)
        for i, trial in enumerate(trials):
            if len(trail) < budget:
                m = measure(trial, trials[i + 1 :])
                if m.passed:
                    current, last = trial, m
                    break
        if last.passed or len(trail) >= budget:
            break
    pruned = True
    if last.passed:
        if progress is not None:
            progress.stage("fix: pruning", None)
        for kinds in (("float_node",), ("tensor_16bit",), FREE):
            group = [c for c in current if c.kind in kinds]
            stack = [group] if group else []
            while stack:
                if len(trail) >= budget:
                    pruned = False
                    break
                g = stack.pop()
                trial = [c for c in current if c not in g]
                # what the next step asks for: without the top of the stack if this passes, else without g's upper half
                ahead = [[c for c in trial if c not in stack[-1]]] if stack else []
                if len(g) > 1:
                    ahead.append([c for c in current if c not in g[len(g) // 2 :]])
                elif stack:
                    ahead.append([c for c in current if c not in stack[-1]])
                m = measure(trial, ahead)
                if m.passed:
                    current, last = trial, m
                elif len(g) > 1:  # the lower-ranked half first: the more likely to go
                    half = len(g) // 2
                    stack += [g[:half], g[half:]]
    else:  # the smallest shortfall measured
        last = min(trail, key=lambda m: (m.shortfall, cost(m.changes)))
        current = list(last.changes)
    return SearchResult(tuple(_order(current)), last, base, last.passed, cands, tuple(trail), pruned)


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


@dataclass(frozen=True)
class Hint:
    """A cause's remedy as a candidate hint: ``detail`` is the cause in words (the candidate's why)."""

    kind: str
    node: str | None
    tensor: str | None
    detail: str


def cause_hints(report) -> list[Hint]:
    """The remedies of ``report``'s causes (:func:`qaudit.remedy.causes.diagnose`), worst cause first."""
    from qaudit.remedy.causes import diagnose

    return [Hint(r.kind, r.node, r.tensor, f"{c.layer}: {c.summary}") for c in diagnose(report) for r in c.remedies]


def fix(cfg, gates, progress=None, executor=None, layers=None, hints=None, budget=DEFAULT_BUDGET) -> FixResult:
    """Audit ``cfg``, search the cheapest change set meeting ``gates``' output gates, and audit the
    result again (the verification; every gate of ``gates`` applies to it). ``cfg.output_model``
    receives the fixed model. ``hints``: ranked first (None: the remedies of the before audit's causes,
    :func:`cause_hints`; ``()``: none). ``layers``: propose changes
    for at most that many of the noisiest activations and weights (None: all, in growing tiers).
    ``cfg.ray_address``: both audits sharded over that Ray cluster, and (with no ``executor`` given) the
    change sets measured as its tasks (:class:`qaudit.distributed.RayExecutor`): the same result."""
    import tempfile
    import time
    from pathlib import Path

    from qaudit.options import QuantConfig
    from qaudit.pipeline.audit import audit
    from qaudit.remedy.sensitivity import _ranges_loader, candidates, quant_of, workspace

    if executor is None and cfg.ray_address is not None:
        from qaudit.distributed import RayExecutor

        executor = RayExecutor(cfg.ray_address)  # connects first: no cluster there is one line, before any work
    t0 = time.perf_counter()
    alt = alternative_method(cfg.quant.calibrate_method)
    record: dict = {"calibrate": [QuantConfig(calibrate_method=alt)]}
    before = audit(cfg.replace(output_model=None), progress, record=record)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qaudit-fix-") as tmp:
        if hints is None:
            hints = cause_hints(before)
        cands = candidates(before, record["folded"], hints, alt, layers)
        sixteen = any(c.change.kind == "tensor_16bit" for c in cands)
        ws = workspace(record, cfg, gates, Path(tmp) / "ws", alt, progress, sixteen)
        found = search(ws, cands, executor, progress, budget)
        quant = quant_of(cfg.quant, found.changes, _ranges_loader(ws, found.changes))
    del record
    t2 = time.perf_counter()
    after_record: dict = {}
    after = audit(cfg.replace(quant=quant), progress, record=after_record)
    t3 = time.perf_counter()
    seconds = {"before": t1 - t0, "search": t2 - t1, "after": t3 - t2, "total": t3 - t0}
    return FixResult(before, after, found, quant, after_record, alt, seconds)


__all__ += ["FixResult", "Hint", "cause_hints", "fix"]
