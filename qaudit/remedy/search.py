"""The fix search: the cheapest change set whose measured outputs pass every output gate.

Cost order (issue 19): first the number of nodes left in float, then the number
of tensors at 16 bits; per-channel weights and another calibration range cost
nothing extra, but are kept only where they are needed. The search, every
step measured with :func:`qaudit.remedy.sensitivity.verify`:

1. the baseline (no change);
2. growing tiers of the ranking: the 16-bit and per-channel candidates of each tier together, then
   with the other ranges, and only when none of those passes every candidate of each tier (nodes in
   float too);
3. the smallest passing prefix of that set in ranking order (a binary search between the last
   tier that failed and the first that passed);
4. pruning it: the nodes in float first, then the 16-bit tensors, then the free changes are
   taken out, a whole group at a time, halving a group whose removal breaks a gate, down to
   single changes;
5. the 1-minimality check: every change whose single removal was not measured on the final set
   is taken out alone; one that passes without it goes, and the check starts again.

The result is 1-minimal (removing any one change fails a gate) when the search ends within its
caps (:attr:`SearchResult.pruned`): the count of measurements (``budget``, ``--max-measurements``)
and the cost cap (``max_cost``, ``--max-cost``: the fix's wall time in units of the audit before;
a set is measured only while the time spent, the next measurement's estimate and the verifying
audit's fit under it). Whichever comes first stops the search (:attr:`SearchResult.stopped_by`).
A set ORT refuses to quantize is never a dead end: the changes its message names are marked refused (with ORT's words, :attr:`SearchResult.refused`)
and the set is measured again without them. When nothing passes, the result is the set with
the smallest shortfall measured, and its failing checks say what limits it.
"""

from __future__ import annotations

import re
import time
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
    pruned: bool = True  # False: the budget stopped the pruning (the set passes but may not be 1-minimal)
    #: the changes ORT refused to quantize, each with ORT's message (the set was measured again without them)
    refused: tuple[tuple[Change, str], ...] = ()
    forced: tuple[Change, ...] = ()  # changes every measured set held (the layer gates' remedies, :func:`fix`)
    #: the cap that stopped the search before it ended on its own: None, "max_measurements" or "max_cost"
    stopped_by: str | None = None
    budget: int | None = None  # the count cap (measurements at most)
    max_cost: float | None = None  # the cost cap, in audits before (None: none)
    #: the wall time the cost cap was measured against: the audit before's seconds (None: no cost cap)
    audit_seconds: float | None = None
    seconds: float | None = None  # the fix's wall time when the search ended (from the start of the audit before)
    cost_limit: float | None = None  # the cost cap in seconds: max(max_cost x audit_seconds, MIN_COST_SECONDS)

    @property
    def n_measured(self) -> int:
        return len(self.trail)

    @property
    def minimal(self) -> bool:
        """The set passes and removing any one of its searched changes fails a gate (measured)."""
        return self.met and self.pruned

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


def culprits(error: str, changes) -> list[Change]:
    """The changes of ``changes`` an ORT refusal names: a name in ``error`` (quoted or not) that is a
    change's tensor or node, or a quoted name beginning with its tensor's (ORT's derived names,
    ``<tensor>_intermediate``, ``<tensor>_convert``, ...). Empty when the message names none of them."""
    words = set(re.findall(r"[^\s'\",;()\[\]]+", error))
    quoted = set(re.findall(r"'([^']+)'", error)) | set(re.findall(r'"([^"]+)"', error))
    words |= quoted

    def named(c: Change) -> bool:
        if c.kind == "float_node":
            return c.node in words
        return c.tensor in words or any(q.startswith(c.tensor + "_") for q in quoted)

    return [c for c in changes if named(c)]


#: measurements the search makes at most by default (the baseline included)
DEFAULT_BUDGET = 32
#: candidates of the first tier: about the noisiest 8 layers' (each tier doubles it)
FIRST_TIER = 24
#: the cost cap by default: a fix's wall time at most this many times the audit before's (``--max-cost``)
DEFAULT_MAX_COST = 5.0
#: measurements at most with ``--minimal`` (no cost cap): the search runs until its result is 1-minimal
MINIMAL_BUDGET = 1000
#: how much longer the verifying audit takes than the audit before, per second a set's measurement takes longer
#: than the baseline's: an audit runs the quantized graph twice (accumulated, isolated) with its intermediate
#: tensors as outputs, a measurement once (PP-OCR rec, about 250 tensors at 16 bits, four runs of bench_fix.py:
#: the verifying audit 1.17-1.62x the audit before, 7-22 s longer where the kept set measured 1.4-6.1 s longer
#: than the baseline: 3.6, 8 (beside a test run), 5.0 and 4.9 times)
AUDIT_GROWTH = 5.0
#: the cost cap never stops a fix before this many seconds: in units of a sub-second audit, one-off costs would
#: stop it after its first set (ORT's first 16-bit quantization imports torch where installed, 2.2 s: ORT quirk 64)
MIN_COST_SECONDS = 60.0


def search(
    ws,
    cands,
    executor=None,
    progress=None,
    budget: int = DEFAULT_BUDGET,
    forced=(),
    max_cost: float | None = None,
    audit_seconds: float | None = None,
    started: float | None = None,
    clock=time.perf_counter,
    min_seconds: float = MIN_COST_SECONDS,
) -> SearchResult:
    """Search the cheapest passing change set among ``cands`` (ranked, best first:
    :func:`~qaudit.remedy.sensitivity.candidates`); every set measured holds ``forced`` too.

    Top down, so that a remedy spread over many layers costs as few measurements as one in a
    single layer: the baseline; then for growing tiers of the ranking (the first
    :data:`FIRST_TIER` candidates, twice as many, ... all of them) the tier's 16-bit and
    per-channel candidates together, then with the other ranges too, and only when no tier
    passes without a node in float, every candidate of each tier. The first
    passing set is cut to its smallest passing prefix (binary search), then changes are taken out
    in cost order (nodes in float, then 16-bit tensors, then free changes), a whole group at a
    time and halving a group whose removal fails, down to single changes: about
    ``2 k log2(n / k)`` measurements for ``k`` needed changes among ``n``; last, each change whose
    removal from the final set was not measured is tried alone (1-minimality). ``budget`` caps the
    measurements: the search stops there and the set kept still passes (:attr:`SearchResult.pruned`
    is then False). Each removal tried is a measured sensitivity (:attr:`SearchResult.trail`).

    The cost cap (``max_cost`` > 0 with ``audit_seconds``, the audit before's wall time): a set is
    measured only while ``elapsed + next + verifying <= max(max_cost * audit_seconds, min_seconds)``: ``elapsed``
    the ``clock()`` seconds since ``started`` (the fix's start; default: this call's), ``next`` the mean
    wall time of the sets this search measured so far or the last one's ``seconds`` if longer (the baseline
    is measured anyway), ``verifying`` the verifying audit's estimate: ``audit_seconds``, plus
    :data:`AUDIT_GROWTH` times what the last passing set (none: the last set) took longer to measure than
    the baseline. :attr:`SearchResult.stopped_by` names the cap that stopped the search (None: it ended
    on its own).
    """
    t_search = clock()
    started = t_search if started is None else started
    capped = bool(max_cost) and audit_seconds is not None
    limit = max(max_cost * audit_seconds, min_seconds) if capped else None
    stopped: list[str] = []  # the cap that stopped the search (sticky: once stopped, it measures nothing more)
    trail: list[Measured] = []
    memo: dict[frozenset, Measured] = {}
    asked: set[frozenset] = set()
    refused: dict[Change, str] = {}
    forced = tuple(dict.fromkeys(forced))
    # an executor measuring several sets at once (a Ray cluster's CPUs, --workers N local processes): the
    # sets the next step may ask for are measured together with the one it asks for; the trail, the budget
    # and the result are the one-at-a-time search's (a set is in the trail when the search asks for it)
    width = getattr(executor, "width", 1)

    def full(changes) -> list[Change]:
        return [c for c in dict.fromkeys([*forced, *changes]) if c not in refused]

    def fetch(sets) -> None:
        todo: dict[frozenset, tuple] = {}
        for s in sets:  # the first ``width`` sets not measured yet
            key = frozenset(full(s))
            if key not in memo and key not in todo:
                todo[key] = tuple(_order(key))
                if len(todo) >= max(1, width):
                    break
        for key, m in zip(todo, verify(ws, list(todo.values()), executor, progress), strict=True):
            memo[key] = m

    retried = []  # refused sets measured again: they do not count against the budget

    def measure(changes, ahead=()) -> Measured:
        """``changes`` (with ``forced``, without refused changes) measured; a refused set is measured
        again without the changes ORT's message names (the changes measured: ``Measured.changes``)."""
        while True:
            key = frozenset(full(changes))
            if key not in memo:
                fetch([changes, *ahead] if width > 1 else [changes])
            m = memo[key]
            if key not in asked:
                asked.add(key)
                trail.append(m)
            if not m.error:
                return m
            if not affordable():  # the cost cap: no measuring again, the refused set counts as failing
                stopped[:] = stopped or ["max_cost"]
                return m
            bad = culprits(m.error, [c for c in key if c not in forced])
            if not bad and len(retried) < budget:  # the refusals' own measurements: at most the budget again
                bad = isolate(key)
            if not bad:  # refused only together: the set counts as failing
                return m
            for c in bad:
                refused[c] = m.error if culprits(m.error, [c]) else memo[frozenset(full([c]))].error
            retried.append(m)
            changes, ahead = [c for c in changes if c not in bad], ()

    def isolate(key) -> list[Change]:
        """The one change of a refused set that ORT refuses alone, found by halving (measured: each
        half holds ``forced`` too); empty when no half is refused on its own."""
        pool = _order(c for c in key if c not in forced)
        while len(pool) > 1:
            for part in (pool[: len(pool) // 2], pool[len(pool) // 2 :]):
                k = frozenset(full(part))
                if k not in memo:
                    fetch([part])
                if k not in asked:
                    asked.add(k)
                    trail.append(memo[k])
                    retried.append(memo[k])
                if memo[k].error:
                    pool = part
                    break
            else:
                return []
        return pool

    def affordable() -> bool:
        """The cost cap leaves room for one more measurement and the verifying audit."""
        if not capped:
            return True
        now = clock()
        return (now - started) + next_seconds(now) + verifying_seconds() <= limit

    def next_seconds(now) -> float:
        """The next measurement's estimate: the mean wall time of this search's, or the last one's if longer."""
        return max((now - t_search) / len(trail), trail[-1].seconds) if trail else 0.0

    def verifying_seconds() -> float:
        """The verifying audit's estimate: the audit before's, and :data:`AUDIT_GROWTH` times what the set it
        would audit (the last passing, else the last measured) took longer to measure than the baseline."""
        if not trail:
            return audit_seconds
        ref = next((m for m in reversed(trail) if m.passed), trail[-1])
        return audit_seconds + AUDIT_GROWTH * max(0.0, ref.seconds - trail[0].seconds)

    def room() -> bool:
        """Another measurement fits under both caps; the first cap found full stops the search for good."""
        if not stopped:
            if len(trail) - len(retried) >= budget:
                stopped.append("max_measurements")
            elif not affordable():
                stopped.append("max_cost")
        return not stopped

    def kept(changes) -> list[Change]:
        return [c for c in changes if c not in refused]

    cands = tuple(cands)
    every = [c.change for c in cands if c.change not in forced]
    if progress is not None:
        progress.stage("fix: measuring change sets", None)
    size, sizes = FIRST_TIER, []
    while size < len(every):
        sizes.append(size)
        size *= 2
    sizes.append(len(every))

    def tiers(keep) -> list[list[Change]]:
        """The candidates ``keep`` takes of each tier, each list longer than the one before."""
        out: list[list[Change]] = []
        for n in sizes:
            t = [c for c in every[:n] if keep(c)]
            if t and (not out or len(t) > len(out[-1])):
                out.append(t)
        return out

    # the plan: the sets of every tier without a node in float before any set with one (the cost order):
    # 16-bit tensors and per-channel weights first, with the other ranges next (a range changed everywhere
    # can cost more than it gains: PP-OCR rec's every range alone, 1.6 dB against 2.9 dB as quantized),
    # then every candidate of each tier
    plan: list[list[Change]] = []
    for keep in (lambda c: c.kind in ("tensor_16bit", "per_channel"), lambda c: c.kind != "float_node", None):
        for t in tiers(keep or (lambda c: True)):
            if all(frozenset(t) != frozenset(p) for p in plan):
                plan.append(t)

    def result(current, last, pruned=True) -> SearchResult:
        return SearchResult(
            tuple(_order(full(current))), last, base, last.passed, cands, tuple(trail), pruned,
            tuple(refused.items()), forced, stopped[0] if stopped else None, budget,
            max_cost if capped else None, audit_seconds if capped else None, clock() - started, limit,
        )  # fmt: skip

    base = measure([], plan[:1])
    if base.passed:
        return result([], base)
    current, last = [], base
    for i, trial in enumerate(plan):
        if not room():
            break
        m = measure(trial, plan[i + 1 :])
        if m.passed:
            current, last = kept(trial), m
            break
    if not last.passed:  # the smallest shortfall measured
        last = min(trail, key=lambda m: (m.shortfall, cost(m.changes)))
        return result([c for c in last.changes if c not in forced], last, not stopped)
    if progress is not None:
        progress.stage("fix: pruning", None)

    def failed(changes) -> bool:
        """Asked for and measured failing (a set only measured ahead is not evidence: the trail is the
        one-at-a-time search's)."""
        key = frozenset(full(changes))
        return key in asked and not memo[key].passed

    # 3. the smallest passing prefix in ranking order, between the longest prefix measured failing and the set
    lo = max((k for k in range(len(current)) if failed(current[:k])), default=0)
    hi = len(current)
    while hi - lo > 1 and room():
        mid = (lo + hi) // 2
        m = measure(current[:mid], [current[: (lo + mid) // 2], current[: (mid + hi) // 2]])
        if m.passed:
            current, last = kept(current[:mid]), m
            hi = len(current)
        else:
            lo = mid
    # 4. group pruning in cost order
    pruned = True
    for kinds in (("float_node",), ("tensor_16bit",), FREE):
        group = [c for c in current if c.kind in kinds]
        stack = [group] if group else []
        while stack:
            if not room():
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
                current, last = kept(trial), m
            elif len(g) > 1:  # the lower-ranked half first: the more likely to go
                half = len(g) // 2
                stack += [g[:half], g[half:]]
    # 5. 1-minimality: no single change can go (removals measured on this very set are not measured again)
    changed = pruned
    while changed:
        changed = False
        removals = [[x for x in current if x != c] for c in _order(current)]
        for i, without in enumerate(removals):
            if failed(without):
                continue
            if not room():
                pruned = False
                break
            # measured together (a wide executor): the next single removals, in the order this loop asks for them
            m = measure(without, [w for w in removals[i + 1 :] if not failed(w)])
            if m.passed:
                current, last, changed = kept(without), m, True
                break
    return result(current, last, pruned)


__all__ = [
    "AUDIT_GROWTH",
    "DEFAULT_BUDGET",
    "DEFAULT_MAX_COST",
    "MINIMAL_BUDGET",
    "MIN_COST_SECONDS",
    "SearchResult",
    "cost",
    "search",
]


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


#: verifying audits at most: each layer gate still failing gets its layer's next remedy and the search runs again
MAX_ROUNDS = 3


def fix(
    cfg,
    gates,
    progress=None,
    executor=None,
    layers=None,
    hints=None,
    budget: int | None = None,
    max_cost: float | None = DEFAULT_MAX_COST,
    minimal: bool = False,
    workers: int = 1,
) -> FixResult:
    """Audit ``cfg``, search the cheapest change set meeting ``gates``' output gates, and audit the
    result again (the verification; every gate of ``gates`` applies to it). When the verifying audit
    fails a layer gate, that layer's next remedy (:func:`~qaudit.remedy.sensitivity.layer_remedies`)
    is added to every set and the search runs again, at most :data:`MAX_ROUNDS` audits in all.
    ``cfg.output_model`` receives the fixed model. ``hints``: ranked first (None: the remedies of
    the before audit's causes, :func:`cause_hints`; ``()``: none). ``layers``: propose changes
    for at most that many of the noisiest activations and weights (None: all, in growing tiers).
    ``cfg.ray_address``: both audits sharded over that Ray cluster, and (with no ``executor`` given) the
    change sets measured as its tasks (:class:`qaudit.distributed.RayExecutor`): the same result;
    ``cfg.ray_shared_dir``: the workspace is written there and the tasks read it by path.

    The caps (docs/remedy.md#the-caps): ``budget`` measurements at most per search (None:
    :data:`DEFAULT_BUDGET`, with ``minimal`` :data:`MINIMAL_BUDGET`), and ``max_cost``: the whole fix
    within that many times the audit before's wall time (0 or None: no cost cap; ``minimal``: none
    either, the search runs until 1-minimal or ``budget``), the next measurement and the verifying
    audit estimated from the measurements (:func:`search`).

    ``workers`` > 1 (``--workers N``, no ``executor`` given): the change sets are measured in that many
    local processes (:class:`~qaudit.remedy.sensitivity.ProcessExecutor`, one pool for the whole fix), the
    search measuring the sets its next step may ask for together with the one it asks for: the same result
    and trail as one process (the cost cap aside, which counts wall time). With ``cfg.ray_address`` it is a
    :class:`~qaudit.errors.ConfigError`: the cluster's CPUs are the width there."""
    import tempfile
    import time
    from pathlib import Path

    from qaudit.errors import ConfigError
    from qaudit.gate import evaluate
    from qaudit.options import QuantConfig
    from qaudit.pipeline.audit import audit
    from qaudit.remedy.sensitivity import _ranges_loader, candidates, layer_remedies, quant_of, workspace

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1 (processes measuring change sets), not {workers!r}")
    if workers > 1 and cfg.ray_address is not None:
        raise ConfigError(
            f"--workers {workers} measures change sets in local processes, but with --ray-address the cluster "
            "measures them (as many at once as it has CPUs): drop one of them"
        )
    if workers > 1 and executor is not None:
        raise ConfigError("give fix() an executor or workers > 1, not both")
    if executor is None and cfg.ray_address is not None:
        from qaudit.distributed import RayExecutor

        executor = RayExecutor(cfg.ray_address, cfg.ray_shared_dir)  # connects first: no cluster there is one
        try:  # line, before any work
            return fix(cfg, gates, progress, executor, layers, hints, budget, max_cost, minimal)
        finally:
            executor.close()
    if budget is None:
        budget = MINIMAL_BUDGET if minimal else DEFAULT_BUDGET
    if minimal:
        max_cost = None
    t0 = time.perf_counter()
    alt = alternative_method(cfg.quant.calibrate_method)
    record: dict = {"calibrate": [QuantConfig(calibrate_method=alt)]}
    before = audit(cfg.replace(output_model=None), progress, record=record)
    t1 = time.perf_counter()
    seconds = {"before": t1 - t0, "search": 0.0, "after": 0.0}
    forced: list = []
    root = getattr(executor, "workspace_root", None)  # a Ray executor's shared folder, say
    with (
        root() if root is not None else tempfile.TemporaryDirectory(prefix="qaudit-fix-") as tmp,
        _local_pool(executor, workers, Path(tmp)) as executor,  # closed before the folder is removed
    ):
        t = time.perf_counter()
        if hints is None:
            hints = cause_hints(before)
        cands = candidates(before, record["folded"], hints, alt, layers)
        sixteen = any(c.change.kind == "tensor_16bit" for c in cands)
        ws = workspace(record, cfg, gates, Path(tmp) / "ws", alt, progress, sixteen)
        prepared = record["folded"]
        del record
        seconds["search"] += time.perf_counter() - t  # the workspace: fp32 outputs, the 16-bit graph's ranges
        for round_ in range(MAX_ROUNDS):
            t = time.perf_counter()
            found = search(ws, cands, executor, progress, budget, forced, max_cost, seconds["before"], t0)
            quant = quant_of(cfg.quant, found.changes, _ranges_loader(ws, found.changes))
            seconds["search"] += time.perf_counter() - t
            t = time.perf_counter()
            after_record: dict = {}
            after = audit(cfg.replace(quant=quant), progress, record=after_record)
            seconds["after"] += time.perf_counter() - t
            if not found.met or round_ == MAX_ROUNDS - 1:
                break
            failing = [c for c in evaluate(after, gates).failures if c.scope == "layer"]
            new = layer_remedies(after, prepared, failing, forced, alt, cause_hints(after)) if failing else []
            if not new:
                break
            forced += new
    seconds["total"] = time.perf_counter() - t0
    return FixResult(before, after, found, quant, after_record, alt, seconds)


def _local_pool(executor, workers: int, tmp):
    """A context yielding ``executor``, or with ``workers`` > 1 a process pool (temporary files in ``tmp``)."""
    import contextlib

    from qaudit.remedy.sensitivity import ProcessExecutor

    if executor is not None or workers <= 1:
        return contextlib.nullcontext(executor)
    return ProcessExecutor(workers, tmp)


__all__ += ["FixResult", "Hint", "cause_hints", "fix"]
