"""The ``fix`` section of ``qaudit fix``'s before/after report: what was changed, and how it was found.

:func:`section` turns a :class:`~qaudit.remedy.search.FixResult` into the section, a plain
JSON-ready dict (every number a float or ``null``, as the rest of the report,
:mod:`qaudit.report`), so the section built here and the one read back from
``--json`` are equal and render the same text. The multi-run report carries it
(:attr:`qaudit.runs.MultiReport.fix`); :func:`verification` is derived from the
``after`` run's gates whenever the document is written, so ``qaudit report``
re-gates it. Field by field in docs/json-format.md (`fix`).

Like :mod:`qaudit.report`, this module imports neither onnx nor onnxruntime
(the renderers read the section): the result objects are read by attribute.
"""

from __future__ import annotations

import math
from dataclasses import asdict

#: the cost tier of a change kind (docs/remedy.md: nodes in float count first, then 16-bit tensors)
TIERS = {"float_node": "float", "tensor_16bit": "16-bit", "per_channel": "free", "range": "free"}

#: the prefix of a candidate's reason when it is a cause's remedy (qaudit.remedy.sensitivity.candidates)
CAUSE_PREFIX = "cause: "

#: the outputs the fix writes, by key of ``files``: the flag that names them
FILE_FLAGS = {
    "output_model": "--output-model",
    "recipe": "--recipe",
    "ort_args": "--ort-args",
    "prepared_model": "--prepared-model",
}


def _clean(v):
    from qaudit.report import _clean as clean

    return clean(v)


def _change(c) -> dict:
    return {"kind": c.kind, "node": c.node, "tensor": c.tensor, "detail": c.detail}


def _key(d: dict) -> tuple:
    return (d["kind"], d["node"], d["tensor"], d["detail"])


def _describe(c) -> str:
    describe = getattr(c, "describe", None)
    return describe() if callable(describe) else f"{c.kind} {c.node} {c.tensor or ''}".strip()


def _cost(changes) -> list[int]:
    return [sum(c["kind"] == "float_node" for c in changes), sum(c["kind"] == "tensor_16bit" for c in changes)]


def _cause(cand) -> str | None:
    """The cause a candidate came from (its hint's words), or None for a candidate ranked by noise."""
    given = getattr(cand, "cause", None)
    if given:
        return str(given)
    why = str(getattr(cand, "why", "") or "")
    return why[len(CAUSE_PREFIX) :] if why.startswith(CAUSE_PREFIX) else None


def _worst_sqnr(outputs) -> float | None:
    """The lowest output SQNR of a measurement's output rows (``+inf``: no error; None: none measured)."""
    vals = [v for v in map(sqnr, outputs) if v is not None]
    return min(vals) if vals else None


def _measurement(m, index: int) -> dict:
    from qaudit.report import gates_to_dict

    changes = [_change(c) for c in m.changes]
    gates = gates_to_dict(m.gates) if m.gates is not None else None
    return {
        "index": index,
        "changes": changes,
        "cost": _cost(changes),
        "outputs": [asdict(o) for o in m.outputs],
        "checks": gates["checks"] if gates else [],
        "passed": bool(m.passed),
        "shortfall": m.shortfall,
        "seconds": m.seconds,
        "error": m.error or None,
        "reference": None,
        "removed": [],
    }


def _references(trail: list[dict]) -> None:
    """Each entry's ``reference``: the latest earlier passing set it is a strict subset of (the set the
    pruning took changes out of), and ``removed``: what it took out; the first sets have none."""
    sets = [frozenset(_key(c) for c in m["changes"]) for m in trail]
    for i, m in enumerate(trail):
        keys = sets[i]
        for j in range(i - 1, -1, -1):
            ref = trail[j]
            if ref["passed"] and keys < sets[j]:
                m["reference"] = j
                m["removed"] = [c for c in ref["changes"] if _key(c) not in keys]
                break


def _sensitivities(trail: list[dict]) -> dict[tuple, dict]:
    """Each change's measured sensitivity, by change: the trail's smallest removal that took it out of a
    passing set (the last of equal size): that entry (``trail``, the set without it), the set it was taken
    out of (``reference``), how many changes went with it (``removed_with``) and whether the gates passed
    without it (``passed_without``). Changes no removal took out have none."""
    best: dict[tuple, dict] = {}
    for m in trail:
        if m["reference"] is None:
            continue
        for c in m["removed"]:
            k = _key(c)
            if k not in best or len(m["removed"]) <= len(best[k]["removed"]):
                best[k] = m
    return {
        k: {
            "trail": m["index"],
            "reference": m["reference"],
            "removed_with": len(m["removed"]) - 1,
            "passed_without": m["passed"],
        }
        for k, m in best.items()
    }


def worst_sqnr(m: dict) -> float | None:
    """The lowest output SQNR of a measurement of the section (``+inf``: no error; None: none measured)."""
    return _worst_sqnr(m["outputs"])


def section(result, gates, budget: int | None = None, files: dict | None = None) -> dict:
    """The ``fix`` section of ``result`` (a :class:`~qaudit.remedy.search.FixResult`) searched for
    ``gates`` (the target, a :class:`~qaudit.gate.GateConfig`) with ``budget`` measurements at most;
    ``files``: key of :data:`FILE_FLAGS` -> the path written, as given (None: not written)."""
    s = result.search
    trail = [_measurement(m, i) for i, m in enumerate(s.trail)]
    _references(trail)
    index = {frozenset(_key(c) for c in m["changes"]): m["index"] for m in trail}

    def of(m) -> dict:
        d = _measurement(m, index.get(frozenset(_key(_change(c)) for c in m.changes)))
        if d["index"] is not None:
            d.update(reference=trail[d["index"]]["reference"], removed=trail[d["index"]]["removed"])
        return d

    sensitivity = _sensitivities(trail)
    # a change of the final set: its single removal from that set, wherever the trail measured it (the
    # search's 1-minimality evidence; the set without it may be an earlier one, the baseline say)
    final_keys = frozenset(_key(_change(c)) for c in s.changes)
    final_index = index.get(final_keys)
    if s.met and final_index is not None:
        for k in final_keys:
            j = index.get(final_keys - {k})
            if j is not None:
                sensitivity[k] = {
                    "trail": j,
                    "reference": final_index,
                    "removed_with": 0,
                    "passed_without": trail[j]["passed"],
                }
    cands = []
    rank_of = {}
    chosen = {_key(_change(c)) for c in s.changes}
    for rank, c in enumerate(s.candidates, 1):
        ch = _change(c.change)
        rank_of[_key(ch)] = rank
        cands.append(
            {
                "rank": rank,
                **ch,
                "tier": TIERS.get(ch["kind"], "free"),
                "score": c.score,
                "reason": c.why,
                "cause": _cause(c),
                "chosen": _key(ch) in chosen,
                "sensitivity": sensitivity.get(_key(ch)),
            }
        )
    causes = {_key(c): c["cause"] for c in cands}
    changes = []
    for c in s.changes:
        ch = _change(c)
        changes.append(
            {
                **ch,
                "tier": TIERS.get(c.kind, "free"),
                "description": _describe(c),
                "rank": rank_of.get(_key(ch)),
                "cause": causes.get(_key(ch)),
            }
        )
    refused = []
    for item in getattr(s, "refused", None) or ():
        if isinstance(item, tuple):  # (change, ORT's message)
            change, message = item[0], item[1]
        else:
            change, message = getattr(item, "change", item), getattr(item, "message", getattr(item, "error", ""))
        refused.append({**_change(change), "description": _describe(change), "message": str(message)})
    files = files or {}
    out = {
        "met": bool(s.met),
        "target": gates.as_dict(False),
        "skip_missing": bool(gates.skip_missing),
        "alternative_method": result.alternative,
        "changes": changes,
        "cost": {
            "float_nodes": _cost(changes)[0],
            "tensors_16bit": _cost(changes)[1],
            "per_channel": sum(c["kind"] == "per_channel" for c in changes),
            "ranges": sum(c["kind"] == "range" for c in changes),
        },
        "baseline": of(s.baseline),
        "final": of(s.measured),
        "limits": list(s.limits),
        "candidates": cands,
        "trail": trail,
        "refused": refused,
        "budget": budget if budget is not None else getattr(s, "budget", None),
        "max_cost": getattr(s, "max_cost", None),
        "stopped_by": getattr(s, "stopped_by", None),
        "cost_limit_seconds": getattr(s, "cost_limit", None),
        "pruned": bool(s.pruned),
        "minimal": bool(getattr(s, "minimal", False)),
        "forced": [{**_change(c), "description": _describe(c)} for c in getattr(s, "forced", None) or ()],
        "measurements": s.n_measured,
        "seconds": dict(result.seconds),
        "files": {k: (None if files.get(k) is None else str(files[k])) for k in FILE_FLAGS},
    }
    return _clean(out)


def verification(after) -> dict:
    """The verifying audit's verdict (the ``after`` run, :class:`~qaudit.report.Report`), from its gates
    as they stand: ``passed`` (None: not gated), the counts, and the failing checks."""
    g = after.gates
    if g is None:
        return {"run": "after", "passed": None, "checks": 0, "failed": 0, "failures": []}
    from qaudit.report import gates_to_dict

    failures = [c for c in gates_to_dict(g)["checks"] if c["status"] == "fail"]
    return {"run": "after", "passed": g.passed, "checks": len(g.checks), "failed": len(failures), "failures": failures}


def to_dict(fix: dict, after) -> dict:
    """``fix`` as written: the section with the ``after`` run's :func:`verification`."""
    return {**fix, "verification": verification(after)}


# ------------------------------------------------------------------ reading


def check(d, where: str = "fix") -> dict | None:
    """A ``fix`` section read from JSON, its shape checked (a ``ValueError`` naming the field); the
    derived ``verification`` is dropped (it is recomputed from the runs)."""
    if d is None:
        return None

    def need(obj, key, tp, at, null=False):
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{at} has no '{key}'")
        v = obj[key]
        if v is None and null:
            return v
        if not isinstance(v, tp) or (isinstance(v, bool) and tp is not bool):
            raise ValueError(f"{at}.{key} has the wrong type")
        return v

    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object")
    need(d, "met", bool, where)
    need(d, "target", dict, where)
    need(d, "pruned", bool, where)
    need(d, "measurements", int, where)
    need(d, "budget", int, where, null=True)
    if d.get("max_cost") is not None:  # new in the section: absent from older reports
        need(d, "max_cost", (int, float), where)
    if d.get("stopped_by") is not None and d["stopped_by"] not in STOPPED_BY:
        raise ValueError(f"{where}.stopped_by must be null or one of {', '.join(STOPPED_BY)}")
    need(d, "seconds", dict, where)
    need(d, "files", dict, where)
    for key in ("changes", "candidates", "refused"):
        for i, c in enumerate(need(d, key, list, where)):
            for f in ("kind", "node"):
                need(c, f, str, f"{where}.{key}[{i}]")
    for key in ("baseline", "final"):
        _check_measurement(need(d, key, dict, where), f"{where}.{key}", need)
    for i, m in enumerate(need(d, "trail", list, where)):
        _check_measurement(m, f"{where}.trail[{i}]", need)
    return {k: v for k, v in d.items() if k != "verification"}


def _check_measurement(m: dict, at: str, need) -> None:
    need(m, "passed", bool, at)
    need(m, "shortfall", (int, float), at, null=True)
    for i, o in enumerate(need(m, "outputs", list, at)):
        need(o, "name", str, f"{at}.outputs[{i}]")
        need(o, "sqnr_db", (int, float), f"{at}.outputs[{i}]", null=True)
    for i, c in enumerate(need(m, "checks", list, at)):
        need(c, "status", str, f"{at}.checks[{i}]")
    need(m, "changes", list, at)


# ------------------------------------------------------------------ words shared by the renderers


def sqnr(o: dict) -> float | None:
    """An output row's SQNR as measured: ``null`` with a zero QMSE is ``+inf`` (no error)."""
    if o.get("sqnr_db") is None and o.get("qmse") == 0.0:
        return math.inf
    return o.get("sqnr_db")


def headline(fix: dict, passed: bool | None) -> str:
    """``"target met: 1 node(s) in float, 0 tensor(s) at 16 bits, 0 free change(s); 12 candidates ranked,
    5 change sets measured"``; ``passed``: the verifying audit's verdict."""
    c = fix["cost"]
    free = c["per_channel"] + c["ranges"]
    head = {True: "target met", False: "target NOT met", None: "not gated"}[passed]
    return (
        f"{head}: {c['float_nodes']} node(s) in float, {c['tensors_16bit']} tensor(s) at 16 bits, "
        f"{free} free change(s); {len(fix['candidates'])} candidates ranked, {fix['measurements']} change sets measured"
    )


#: the caps that can stop a search (``fix.stopped_by``), by the flag that sets them
STOPPED_BY = {"max_measurements": "--max-measurements", "max_cost": "--max-cost"}


def cap_words(fix: dict) -> str | None:
    """The cap that stopped the search, in words (None: none did): ``"the cost cap (--max-cost 5: 14 sets
    measured in 212.0 s)"``; a report without ``stopped_by`` whose pruning stopped: the budget."""
    stopped = fix.get("stopped_by")
    search = (fix.get("seconds") or {}).get("search")
    took = f" in {search:.1f} s" if search is not None else ""
    n = fix["measurements"]
    sets = f"{n} set{'' if n == 1 else 's'} measured{took}"
    if stopped == "max_cost":
        return f"the cost cap (--max-cost {fix['max_cost']:g}: {sets})"
    if stopped == "max_measurements" or (stopped is None and "stopped_by" not in fix and not fix["pruned"]):
        b = f" {fix['budget']}" if fix.get("budget") is not None else ""
        return f"the budget (--max-measurements{b}: {sets})"
    return None


def budget_line(fix: dict) -> str:
    """The caps and whether the pruning completed, in words."""
    b = fix["budget"]
    of = f" of at most {b}" if b is not None else ""
    if fix.get("max_cost"):
        limit = fix.get("cost_limit_seconds")
        of += f", within {fix['max_cost']:g}x the audit before" + (f" ({limit:.1f} s)" if limit is not None else "")
    cap = cap_words(fix)
    if not fix["met"]:
        stop = f"; {cap} stopped the search" if cap else ""
        return f"{fix['measurements']} measurements{of}; no set measured met the target{stop}"
    if fix["pruned"]:
        return (
            f"{fix['measurements']} measurements{of}; pruning complete: removing any one change fails a gate (measured)"
        )
    more = (
        "--minimal prunes it until 1-minimal"
        if fix.get("stopped_by") == "max_cost"
        else "a larger --max-measurements prunes it further"
    )
    return (
        f"{fix['measurements']} measurements{of}; {cap or 'a cap'} stopped the pruning: the set passes but may not "
        f"be minimal ({more})"
    )


def limited_by(fix: dict, failures: list[str]) -> str | None:
    """``"limited by: ..."``: the cap that stopped the search before a set passed (and how to lift it),
    then the failing checks (``failures``, in words); None when nothing limits the result."""
    parts = []
    cap = cap_words(fix) if not fix["met"] else None
    if cap:
        by_cost = fix.get("stopped_by") == "max_cost"
        lift = "raise --max-cost or --max-measurements" if by_cost else "raise --max-measurements"
        parts.append(f"{cap}; {lift}")
    if failures:
        parts.append(("the best set fails " if cap else "") + "; ".join(failures))
    return "limited by: " + "; ".join(parts) if parts else None


def trail_rows(fix: dict) -> list[dict]:
    """One compact row per measurement, in order: ``index``, ``what`` (the set, or what was taken out of
    which earlier set), ``cost`` (nodes in float / tensors at 16 bits), ``sqnr`` (worst output SQNR),
    ``verdict`` (pass, fail, or the error), ``shortfall``, ``seconds``."""
    rows = []
    for m in fix["trail"]:
        n = len(m["changes"])
        if m["reference"] is not None:
            removed = m["removed"]
            named = _short_list(removed)
            what = f"#{m['reference']} without {named}"
        elif n == 0:
            what = "no change (baseline)"
        else:
            what = f"{n} change(s): {_short_list(m['changes'])}"
        rows.append(
            {
                "index": m["index"],
                "what": what,
                "cost": f"{m['cost'][0]} / {m['cost'][1]}",
                "sqnr": _worst_sqnr(m["outputs"]),
                "verdict": "error" if m.get("error") else ("pass" if m["passed"] else "fail"),
                "error": m.get("error"),
                "shortfall": m["shortfall"],
                "seconds": m["seconds"],
            }
        )
    return rows


def _short_list(changes: list[dict], n: int = 2) -> str:
    words = [describe(c) for c in changes[:n]]
    more = f" and {len(changes) - n} more" if len(changes) > n else ""
    return ", ".join(words) + more


def describe(c: dict) -> str:
    """A change of the section in words (as :meth:`qaudit.remedy.sensitivity.Change.describe`)."""
    if c.get("description"):
        return c["description"]
    if c["kind"] == "float_node":
        return f"node {c['node']} in float"
    if c["kind"] == "tensor_16bit":
        return f"tensor {c['tensor']} at {c['detail']}"
    if c["kind"] == "per_channel":
        return f"weight {c['tensor']} of {c['node']} per channel"
    return f"tensor {c['tensor']} with the {c['detail']} range"


def output_pairs(fix: dict, before, after) -> list[dict]:
    """Per model output: the SQNR (and QCE, top-1 agreement, accuracy drop where a class output has them)
    before and after, from the two audits (``before``/``after``: :class:`~qaudit.report.Report`), and the
    search's baseline and final measurements."""
    b = {o.name: o for o in before.outputs}
    a = {o.name: o for o in after.outputs}
    mb = {o["name"]: o for o in fix["baseline"]["outputs"]}
    mf = {o["name"]: o for o in fix["final"]["outputs"]}
    rows = []
    for name in list(b) + [n for n in a if n not in b]:
        row = {"name": name}
        for short, field in (("sqnr", "sqnr_db"), ("qce", "qce"), ("top1", "top1_agreement"), ("drop", "acc_drop_pct")):
            row[f"{short}_before"] = getattr(b[name], field) if name in b else None
            row[f"{short}_after"] = getattr(a[name], field) if name in a else None
        row["measured_before"] = sqnr(mb[name]) if name in mb else None
        row["measured_after"] = sqnr(mf[name]) if name in mf else None
        rows.append(row)
    return rows


__all__ = [
    "FILE_FLAGS",
    "TIERS",
    "STOPPED_BY",
    "budget_line",
    "cap_words",
    "check",
    "describe",
    "headline",
    "limited_by",
    "output_pairs",
    "section",
    "sqnr",
    "to_dict",
    "trail_rows",
    "verification",
    "worst_sqnr",
]
