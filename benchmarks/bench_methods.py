"""qaudit's full audit against bare ``quantize_static``, one row per calibration method.

    python benchmarks/bench_methods.py [--rows cls:128 cls:512 det:32 det:128]
        [--methods percentile entropy distribution minmax] [--out results.json] [--work DIR]

For every row (model and N) it runs plain fp32 inference once, then for each
method the two contenders of ``contenders.py`` back to back, each in its own
process measured from outside as in ``bench_audit.py`` (``measure``: wall time
and peak RSS from ``os.wait4``, the watchdog past the memory cap):

* ``ort_static --calibrate-method M``: a bare ``quantize_static`` with that
  method and ORT's defaults for it (QDQ, uint8/uint8, per-tensor, one batch per
  ``get_next``, every intermediate output kept until the end, ORT's default);
* ``qaudit --calibrate-method M``: the whole audit through the CLI (JSON and
  HTML reports), with the same batch size, the same data and ORT's defaults,
  which are qaudit's.

The two runs of a method follow each other, so that on a shared machine both
see about the same load; every figure is printed as a ratio of two runs of the
same row. Per row: qaudit wall / ORT wall (target <= 1 for the histogram
methods), and for MinMax the calibration stage (qaudit's ``probe`` +
``calibrate`` + ``quantize`` phases, what ``quantize_static`` does, against
``quantize_static``'s own time measured inside its process; target <= 1.2) and
qaudit wall / fp32 wall. Peak RSS of qaudit on det at N = 128: target < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_audit as ba  # noqa: E402

METHODS = ("percentile", "entropy", "distribution", "minmax")
HISTOGRAM = ("percentile", "entropy", "distribution")
ROWS = ("cls:128", "cls:512", "det:32", "det:128")
#: batch of every contender: qaudit's automatic choice (cls 12, det 1) rounded down to a
#: divisor of N, which ORT's quantize_static without CalibStridedMinMax needs (bench_audit.even_batch)
AUTO_BATCH = {"cls": 12, "det": 1}
TARGET_VS_ORT = 1.0
TARGET_MINMAX_CALIB = 1.2
TARGET_RSS = 1.5e9
#: the stages of qaudit's audit that do what quantize_static does (meta.phase_seconds)
CALIB_STAGES = ("probe", "calibrate", "quantize")


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def row_ratios(fp32: dict, ort: dict, q: dict) -> dict:
    """The ratios of one method's row (None where a run did not finish)."""
    qp, op = q.get("phases") or {}, ort.get("phases") or {}
    calib = sum(qp[k] for k in CALIB_STAGES if k in qp) if q["status"] == "ok" and qp else None
    return {
        "qaudit_vs_ort_wall": _ratio(q["wall_s"], ort["wall_s"]),
        # ORT killed: it would have needed more than it ran, so qaudit's ratio is below this
        "qaudit_vs_ort_wall_below": _ratio(q["wall_s"], ort["elapsed_s"]) if ort["wall_s"] is None else None,
        "qaudit_calib_s": calib,
        "qaudit_calib_vs_quantize_static": _ratio(calib, op.get("quantize_static")),
        "qaudit_vs_fp32_wall": _ratio(q["wall_s"], fp32["wall_s"]),
        "qaudit_vs_fp32_inference": _ratio(q["wall_s"], (fp32.get("phases") or {}).get("inference")),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| model | N | batch | method | bare quantize_static | qaudit full audit | qaudit / ORT wall "
        "| qaudit calib. / quantize_static | qaudit / fp32 | qaudit RSS / ORT RSS |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        o, q, x = r["ort"], r["qaudit"], r["ratios"]

        def run(m):
            if m["status"] == "skipped":
                return "not run"
            t = f"{m['wall_s']:.1f} s" if m["wall_s"] is not None else f"{m['status']} after {m['elapsed_s']:.0f} s"
            return f"{t}, {ba._mb(m['peak_rss_bytes'])} MB"

        vs_ort = (
            _f(x["qaudit_vs_ort_wall"])
            if x["qaudit_vs_ort_wall"] is not None
            else f"<{_f(x['qaudit_vs_ort_wall_below'])}"
        )
        rss = _ratio(q["peak_rss_bytes"], o["peak_rss_bytes"]) if o["wall_s"] is not None else None
        lines.append(
            f"| {r['model']} | {r['n']} | {r['batch']} | {r['method']} | {run(o)} | {run(q)} | {vs_ort} "
            f"| {_f(x['qaudit_calib_vs_quantize_static'])} | {_f(x['qaudit_vs_fp32_wall'], '{:.1f}')} | {_f(rss)} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        x, tag = r["ratios"], f"{r['model']} N={r['n']} {r['method']}"
        if r["method"] in HISTOGRAM:
            v = x["qaudit_vs_ort_wall"]
            if v is None and x["qaudit_vs_ort_wall_below"] is not None:
                o = r["ort"]
                out.append(
                    f"{tag}: ORT {o['status']} after {o['elapsed_s']:.0f} s at {ba._mb(o['peak_rss_bytes'])} MB "
                    f"(qaudit / ORT wall < {x['qaudit_vs_ort_wall_below']:.2f}): no ratio; qaudit finishes "
                    f"in {r['qaudit']['wall_s']:.0f} s"
                )
            elif v is not None:
                out.append(
                    f"{tag}: qaudit / ORT wall {v:.2f} (target <= {TARGET_VS_ORT:g}): {'met' if v <= TARGET_VS_ORT else 'MISSED'}"
                )
        else:
            v = x["qaudit_calib_vs_quantize_static"]
            if v is not None:
                out.append(
                    f"{tag}: qaudit's calibration stage / quantize_static {v:.2f} (target <= {TARGET_MINMAX_CALIB:g}): "
                    f"{'met' if v <= TARGET_MINMAX_CALIB else 'MISSED'}; full audit / fp32 wall "
                    f"{_f(x['qaudit_vs_fp32_wall'], '{:.1f}')}, / fp32 inference {_f(x['qaudit_vs_fp32_inference'], '{:.1f}')}"
                )
        if r["model"] == "det" and r["n"] == 128 and r["qaudit"]["peak_rss_bytes"]:
            rss = r["qaudit"]["peak_rss_bytes"]
            out.append(
                f"{tag}: qaudit peak RSS {rss / 1e9:.2f} GB (target < 1.5 GB): {'met' if rss < TARGET_RSS else 'MISSED'}"
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), metavar="MODEL:N")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--batch-size",
        type=int,
        help="every contender's batch; default: qaudit's automatic choice, rounded down to a divisor of N",
    )
    p.add_argument(
        "--skip-ort", nargs="*", default=[], metavar="MODEL:N", help="rows where bare quantize_static is not run"
    )
    p.add_argument("--work", type=Path, help="keep data and logs here (default: a temporary folder)")
    p.add_argument("--mem-cap-gb", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--out", type=Path, help="write every measurement and ratio as JSON")
    args = p.parse_args(argv)
    cap = int(args.mem_cap_gb * ba.GiB)
    m = ba.machine()
    print(f"qaudit: {m['qaudit']}; {m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qaudit-bench-methods-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        for spec in args.rows:
            model, n = spec.split(":")
            n = int(n)
            model_path, data = ba.build_inputs(work, model, n)
            bs = ba.even_batch(n, args.batch_size or AUTO_BATCH[model])
            base = work / "methods" / f"{model}_n{n}"
            fp32 = ba.run_contender("fp32", model_path, data, base / "fp32", bs, cap, args.timeout)
            print(f"  {spec} fp32 (batch {bs}): {fp32['status']}, {fp32['elapsed_s']:.1f} s", flush=True)
            for method in args.methods:
                runs = {}
                for name in ("ort_static", "qaudit"):
                    if name == "ort_static" and spec in args.skip_ort:
                        runs[name] = {"status": "skipped", "wall_s": None, "elapsed_s": 0.0, "peak_rss_bytes": None}
                        continue
                    runs[name] = r = ba.run_contender(
                        name,
                        model_path,
                        data,
                        base / f"{name}_{method}",
                        bs,
                        cap,
                        args.timeout,
                        extra=("--calibrate-method", method),
                    )
                    print(
                        f"  {spec} {method} {name}: {r['status']}, {r['elapsed_s']:.1f} s, "
                        f"peak RSS {ba._mb(r['peak_rss_bytes'])} MB, other load {_f(r.get('other_cores'))} cores",
                        flush=True,
                    )
                rows.append(
                    {
                        "model": model,
                        "n": n,
                        "batch": bs,
                        "method": method,
                        "fp32": fp32,
                        "ort": runs["ort_static"],
                        "qaudit": runs["qaudit"],
                        "ratios": row_ratios(fp32, runs["ort_static"], runs["qaudit"]),
                    }
                )
    print()
    print(table(rows))
    print()
    print("\n".join(targets(rows)))
    if args.out:
        args.out.write_text(json.dumps({"machine": m, "mem_cap_bytes": cap, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
