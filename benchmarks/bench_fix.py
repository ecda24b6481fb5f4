"""Benchmark ``qaudit fix`` against one plain audit of the same model and data (issue 19 item 7).

    python benchmarks/bench_fix.py [--models rec minilm] [--target 20] [--budget N] [--max-cost X] [--minimal]
        [--workers N [N ...]] [--data DIR] [--out results.json]

Builds the real models' inputs with ``samples/realworld/build.py`` (PP-OCR rec: 32
calibration and 32 evaluation text lines; all-MiniLM-L6-v2: 64 and 64 sentences, as
``tests/test_realmodels.py`` does; ``--data DIR`` reuses a folder it built), then, in
this one process and for each model: one plain audit (``qaudit.audit``, the default
settings), then ``qaudit fix`` to ``--min-output-sqnr TARGET`` (``qaudit.remedy.search.fix``:
the audit before, the search, the verifying audit; by default capped at ``--max-cost 5`` audits,
``--minimal``: no cost cap, until 1-minimal). Prints the wall times, their ratio
(the issue's target: at most 5x), how many change sets were measured (and how many of them
ORT refused), which cap stopped the search, the nodes the recipe leaves in float, the tensors at 16 bits, the free changes,
whether the set is 1-minimal (every single removal measured failing) and the output SQNR before and after.
``--workers 1 2``: each model's fix once per value, back to back (``qaudit fix --workers N``: N local
processes measuring change sets), and whether each run's trail (the sets measured, in order, and every
measured number) is the first run's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's qaudit, not an installed one
SIZES = {"rec": (32, 32), "minilm": (64, 64)}
TARGET_RATIO = 5.0


def _builder():
    spec = importlib.util.spec_from_file_location("realworld_build", REPO / "samples" / "realworld" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(
    name: str,
    root: Path,
    target: float,
    budget: int | None = None,
    max_cost: float | None = None,
    minimal=False,
    workers: int = 1,
) -> dict:
    from qaudit.gate import GateConfig
    from qaudit.options import audit_config
    from qaudit.pipeline.audit import audit
    from qaudit.remedy import search as S
    from qaudit.remedy.search import DEFAULT_MAX_COST, cost, fix

    build = _builder()
    folder = root / name
    if not (folder / "calib").is_dir():
        n_calib, n_eval = SIZES[name]
        folder = build.build(root, only=(name,), n_calib=n_calib, n_eval=n_eval)[name]
    cfg = audit_config(build.model_path(folder), folder / "calib", folder / "eval")
    t0 = time.perf_counter()
    plain = audit(cfg)
    t_audit = time.perf_counter() - t0
    max_cost = DEFAULT_MAX_COST if max_cost is None else max_cost
    gates = GateConfig({"min_output_sqnr": target})
    rounds = []  # the sets measured per call of verify (with --workers N up to N: the asked one and those ahead)
    measure = S.verify

    def counted(ws, sets, *args):
        sets = list(sets)
        rounds.append(len(sets))
        return measure(ws, sets, *args)

    S.verify = counted
    try:
        result = fix(cfg, gates, budget=budget, max_cost=max_cost, minimal=minimal, workers=workers)
    finally:
        S.verify = measure
    floats, sixteen = cost(result.search.changes)
    return {
        "model": name,
        "workers": workers,
        # the trail as measured (repr: exact floats, NaN equal to NaN), to compare runs with other --workers
        "trail": repr([(m.changes, m.outputs, m.error) for m in result.search.trail]),
        "target_db": target,
        "audit_s": t_audit,
        "fix_s": result.seconds["total"],
        "phases_s": result.seconds,
        "ratio": result.seconds["total"] / t_audit,
        "ratio_before": result.seconds["total"] / result.seconds["before"],  # what --max-cost bounds
        "measured": result.search.n_measured,
        "rounds": len(rounds),  # calls of verify: the sets asked for, with those measured ahead
        "measured_in_all": sum(rounds),  # the sets measured ahead and never asked for included
        "candidates": len(result.search.candidates),
        "budget": result.search.budget,
        "max_cost": result.search.max_cost,
        "stopped_by": result.search.stopped_by,
        "pruned": result.search.pruned,
        "minimal": result.search.minimal,
        "errors": result.search.errors,
        "refused_sets": len(result.search.errors),
        "refused": [[c.describe(), why] for c, why in result.search.refused],
        "seconds_per_set": [m.seconds for m in result.search.trail],
        "float_nodes": floats,
        "tensors_16bit": sixteen,
        "free_changes": len(result.search.changes) - floats - sixteen,
        "changes": [c.describe() for c in result.search.changes],
        "sqnr_before_db": min(o.sqnr_db for o in plain.outputs),
        "sqnr_after_db": min(o.sqnr_db for o in result.after.outputs),
        "met": result.search.met and all(o.sqnr_db >= target for o in result.after.outputs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--target", type=float, default=20.0, help="--min-output-sqnr of the fix (dB)")
    p.add_argument("--budget", type=int, default=None, help="--max-measurements of the fix (default: the fix's)")
    p.add_argument("--max-cost", type=float, default=None, help="--max-cost of the fix (default 5; 0: no cost cap)")
    p.add_argument("--minimal", action="store_true", help="--minimal: no cost cap, search until 1-minimal")
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="--workers of the fix; several: one run each, in turn"
    )
    p.add_argument("--data", type=Path, default=None, help="folder of built subjects (reused; built when absent)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args()
    load = os.getloadavg()  # the machine's load before and after (the runs share it)
    with tempfile.TemporaryDirectory(prefix="bench-fix-") as tmp:
        root = args.data or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = [
            bench(m, root, args.target, args.budget, args.max_cost, args.minimal, w)
            for m in args.models
            for w in args.workers
        ]
    load_after = os.getloadavg()
    first = {}
    for r in rows:
        first.setdefault(r["model"], r)
        r["same_trail"] = r["trail"] == first[r["model"]]["trail"]
    print(
        f"{'model':<8} {'workers':>7} {'audit s':>8} {'fix s':>8} {'ratio':>6} {'sets':>5} {'refused':>8} {'float':>6} "
        f"{'16-bit':>7} {'free':>5} {'1-minimal':>9} {'stopped by':>16} {'SQNR before':>12} {'after':>7}  met"
    )
    for r in rows:
        print(
            f"{r['model']:<8} {r['workers']:7d} {r['audit_s']:8.1f} {r['fix_s']:8.1f} {r['ratio']:6.2f} "
            f"{r['measured']:5d} {r['refused_sets']:8d} {r['float_nodes']:6d} {r['tensors_16bit']:7d} "
            f"{r['free_changes']:5d} "
            f"{'yes' if r['minimal'] else 'no':>9} {r['stopped_by'] or '-':>16} {r['sqnr_before_db']:12.1f} "
            f"{r['sqnr_after_db']:7.1f}  {'yes' if r['met'] else 'NO'}"
        )
    print(f"target: fix wall time <= {TARGET_RATIO:g}x one plain audit")
    before, after = (" ".join(f"{x:.2f}" for x in a) for a in (load, load_after))
    print(f"load average (1, 5, 15 min): {before} before the runs, {after} after")
    for r in rows:
        print(
            f"{r['model']} --workers {r['workers']}: the fix took {r['ratio_before']:.2f}x its own audit before (what "
            f"--max-cost bounds); trail {'the same as' if r['same_trail'] else 'NOT the same as'} the first run's "
            f"(--workers {first[r['model']]['workers']})"
        )
    for r in rows:
        p = r["phases_s"]
        print(
            f"{r['model']} --workers {r['workers']}: before {p['before']:.1f} s, search {p['search']:.1f} s "
            f"({r['measured']} sets; {r['measured_in_all']} measured in {r['rounds']} rounds, "
            f"{sum(r['seconds_per_set']) / max(1, r['measured']):.1f} s each), verifying audit(s) {p['after']:.1f} s, "
            f"caps: --max-measurements {r['budget']}, --max-cost {r['max_cost'] or 0:g}; stopped by "
            f"{r['stopped_by'] or 'neither (the search ended on its own)'}; {len(r['refused'])} change(s) refused"
        )
        for c in r["changes"]:
            print(f"  {c}")
    if args.out:
        doc = {"load_average": [load, load_after], "rows": [{k: v for k, v in r.items() if k != "trail"} for r in rows]}
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
