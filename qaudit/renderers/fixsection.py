"""The "Fix" section of ``qaudit fix``'s before/after report, as plain parts every renderer lays out.

:func:`parts` turns a :class:`~qaudit.runs.MultiReport`'s ``fix`` section
(:mod:`qaudit.remedy.fixreport`) into a verdict line, three tables (the changes, the
outputs before -> after, the trail of measurements, compact) and a few lines (budget,
refused changes, what limits the set, the files written, the time): the terminal,
Markdown and HTML renderers only lay them out, so the section reads the same in each.
Imports neither onnx nor onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass

from qaudit.remedy import fixreport as fx
from qaudit.renderers import numbers as num
from qaudit.renderers.checks import sentence
from qaudit.report import GateCheck

#: trail rows shown; the rest are counted (the JSON report has them all)
MAX_TRAIL = 60
#: the heading of the section
HEADING = "Fix"


@dataclass(frozen=True)
class Part:
    """A table: ``title``, ``header``, ``align`` (one of l/r per column) and rows of text cells."""

    title: str
    header: tuple[str, ...]
    align: str
    rows: tuple[tuple[str, ...], ...]
    more: str = ""  # a line after the table: what it leaves out


@dataclass(frozen=True)
class FixParts:
    verdict: str
    passed: bool | None  # the verifying audit's verdict (None: not gated)
    tables: tuple[Part, ...]
    lines: tuple[str, ...]


def _arrow(a: str, b: str) -> str:
    return a if a == b else f"{a} → {b}"


def _check(d: dict) -> GateCheck:
    from dataclasses import fields

    names = {f.name for f in fields(GateCheck)}
    return GateCheck(**{k: v for k, v in d.items() if k in names})


def parts(mr) -> FixParts:
    """The section of ``mr`` (a MultiReport with ``fix``) in parts."""
    fix = mr.fix
    before, after = (mr.run("before") if "before" in mr.names else mr.run("after")), mr.run("after")
    ver = fx.verification(after)
    passed = ver["passed"]
    verdict = "fix: " + fx.headline(fix, passed)

    changes = []
    for i, c in enumerate(fix["changes"], 1):
        sens = next((x["sensitivity"] for x in fix["candidates"] if x["rank"] == c["rank"]), None)
        without = num.MISSING
        if sens is not None:  # the set measured without it: its worst output, and the verdict
            m = fix["trail"][sens["trail"]]
            group = "" if sens["removed_with"] == 0 else f" (with {sens['removed_with']} more)"
            outcome = "passes" if sens["passed_without"] else "fails"
            without = f"#{m['index']}: {num.db(fx.worst_sqnr(m))} dB, {outcome}{group}"
        why = (
            f"cause: {c['cause']}"
            if c.get("cause")
            else next((x["reason"] for x in fix["candidates"] if x["rank"] == c["rank"]), "")
        )
        changes.append(
            (str(i), fx.describe(c), c["tier"], num.MISSING if c["rank"] is None else str(c["rank"]), why, without)
        )
    if not changes:
        changes.append(("", "(no change: the model as configured meets the target)", "", "", "", ""))
    change_table = Part(
        "Fix: the changes",
        ("#", "change", "cost", "rank", "why", "measured without it (worst output SQNR)"),
        "llllll",
        tuple(changes),
    )

    outs = []
    for o in fx.output_pairs(fix, before, after):
        outs.append(
            (
                o["name"],
                _arrow(num.db(o["sqnr_before"]), num.db(o["sqnr_after"])),
                _arrow(num.db(o["measured_before"]), num.db(o["measured_after"])),
                _arrow(num.nats(o["qce_before"]), num.nats(o["qce_after"])),
                _arrow(num.pct(o["top1_before"]), num.pct(o["top1_after"])),
                _arrow(num.points(o["drop_before"]), num.points(o["drop_after"])),
            )
        )
    output_table = Part(
        "Fix: model outputs, before → after",
        ("output", "SQNR dB (audits)", "SQNR dB (search)", "QCE", "top-1 agreement %", "acc drop %"),
        "lrrrrr",
        tuple(outs),
    )

    rows = fx.trail_rows(fix)
    trail = tuple(
        (
            f"#{r['index']}",
            r["what"],
            r["cost"],
            num.db(r["sqnr"]),
            r["verdict"],
            num.sig(r["shortfall"]),
            f"{r['seconds']:.1f}" if r["seconds"] is not None else num.MISSING,
        )
        for r in rows[:MAX_TRAIL]
    )
    more = f"… and {len(rows) - MAX_TRAIL} more in the JSON report (fix.trail)." if len(rows) > MAX_TRAIL else ""
    trail_table = Part(
        "Fix: every change set measured, in order",
        ("#", "set", "float / 16-bit", "worst output SQNR dB", "gates", "shortfall", "s"),
        "llrrlrr",
        trail,
        more,
    )

    lines = [fx.budget_line(fix)]
    errors = [r for r in rows if r["error"]]
    if errors:
        lines.append(
            f"{len(errors)} change set(s) could not be measured, e.g. #{errors[0]['index']}: {errors[0]['error']}"
        )
    if fix["refused"]:
        r = fix["refused"][0]
        lines.append(f"{len(fix['refused'])} change(s) refused by ONNX Runtime, e.g. {fx.describe(r)}: {r['message']}")
    if fix.get("forced"):
        lines.append(f"{len(fix['forced'])} change(s) added for the layer gates the verifying audit failed")
    if passed is False:
        limit = fx.limited_by(fix, [sentence(_check(c)) for c in ver["failures"]])
    else:
        limit = fx.limited_by(fix, fix["limits"]) if not fix["met"] else None
    if limit:
        lines.append(limit)
    written = [f"{fx.FILE_FLAGS[k]} {v}" for k, v in fix["files"].items() if v is not None]
    if written:
        lines.append("written: " + ", ".join(written))
    t = fix["seconds"]
    if all(t.get(k) is not None for k in ("before", "search", "after")):
        lines.append(
            f"time: audit before {t['before']:.1f} s, search {t['search']:.1f} s, verifying audit {t['after']:.1f} s"
        )
    return FixParts(verdict, passed, (change_table, output_table, trail_table), tuple(lines))


__all__ = ["HEADING", "FixParts", "Part", "parts"]
