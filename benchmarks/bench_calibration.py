"""Peak memory of a full audit per calibration method, at N and 4N samples, in one run.

    python benchmarks/bench_calibration.py [--model cls] [--n 128] [--batch-size 16]
        [--methods percentile minmax entropy distribution] [--out results.json]

Every method's collector holds statistics, not batches (qaudit/pipeline/quantize.py),
so a full audit's peak RSS should not grow with the number of samples: this runs
``python -m qaudit MODEL --calib DATA --calibrate-method M --batch-size B`` on the
same model at N and 4N samples (same batch size, so 4x the batches) and prints
peak RSS and wall time per method and the ratio RSS(4N) / RSS(N). Each audit
runs in its own process and is measured from outside, as in ``bench_audit.py``
(whose data builder and watchdog this reuses).
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

METHODS = ("percentile", "minmax", "entropy", "distribution")


def run(model: Path, data: Path, work: Path, method: str, batch_size: int, mem_cap: int, timeout: float) -> dict:
    out = work / f"{method}.json"
    cmd = [sys.executable, "-m", "qaudit", str(model), "--calib", str(data), "--calibrate-method", method]
    cmd += ["--batch-size", str(batch_size), "--json", str(out), "--quiet"]
    r = ba.measure(cmd, work / f"{method}.log", ba.REPO, mem_cap, timeout, env=ba._env_with_repo())
    if r["exit_code"] == 0:
        r["seconds"] = json.loads(out.read_text())["meta"].get("seconds")
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cls", choices=ba.MODELS)
    p.add_argument("--n", type=int, default=128, help="N (the second run has 4N)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--work", type=Path, default=None, help="keep data and logs here (default: a temporary folder)")
    p.add_argument("--mem-cap-gb", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qaudit-bench-calib-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in (args.n, 4 * args.n):
            model, data = ba.build_inputs(work, args.model, n)
            for method in args.methods:
                d = work / f"n{n}"
                d.mkdir(exist_ok=True)
                r = run(model, data, d, method, args.batch_size, int(args.mem_cap_gb * ba.GiB), args.timeout)
                rows.append({"model": args.model, "n": n, "method": method, "batch_size": args.batch_size, **r})
                print(f"  {args.model} N={n} {method}: exit {r['exit_code']}, {r['elapsed_s']:.1f} s", flush=True)
    print(f"\n{args.model}, batch {args.batch_size}: peak RSS of the full audit at N = {args.n} and 4N = {4 * args.n}")
    print(f"{'method':<14}{'RSS N':>10}{'RSS 4N':>10}{'4N / N':>9}{'wall N':>9}{'wall 4N':>9}")
    for method in args.methods:
        a, b = (next(r for r in rows if r["method"] == method and r["n"] == n) for n in (args.n, 4 * args.n))
        ok = a["peak_rss_bytes"] and b["peak_rss_bytes"] and a["exit_code"] == b["exit_code"] == 0
        ratio = f"{b['peak_rss_bytes'] / a['peak_rss_bytes']:.3f}" if ok else "n/a"
        rss = [f"{r['peak_rss_bytes'] / ba.MB:.0f} MB" if r["peak_rss_bytes"] else "n/a" for r in (a, b)]
        print(
            f"{method:<14}{rss[0]:>10}{rss[1]:>10}{ratio:>9}{a['elapsed_s']:>8.1f}s{b['elapsed_s']:>8.1f}s"
            + ("" if ok else f"  (exit {a['exit_code']}/{b['exit_code']}, killed {a['killed']}/{b['killed']})")
        )
    if args.out:
        args.out.write_text(json.dumps({"machine": ba.machine(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
