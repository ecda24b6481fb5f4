"""Time a slice of the init study's sweep locally and on a local two-node Ray cluster, back to back.

    python studies/init/bench_ray.py [--pattern 'dwsep_bn__he_normal__s*.onnx'] [--models 2]

Audits ``--models`` trained models matching ``--pattern`` (in ``studies/init/work/models``) with every
setting of ``sweep.toml`` (4 jobs for 2 models), first with ``qaudit sweep`` on this machine, then with
``--ray-address`` on a cluster of two nodes of 1 CPU each on loopback (``tests/distributed/cluster.py``,
the same cluster the tests start, stopped by process id). Prints both wall times, their ratio and
whether the rows agree (every column but ``seconds``); the outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))


def rows(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.row.json")):
        row = json.loads(f.read_text())["row"]
        out[f.name] = {k: v for k, v in row.items() if k != "seconds"}, row["seconds"]
    return out


def main() -> None:
    from tests.distributed.cluster import Cluster, loopback_env

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="dwsep_bn__he_normal__s*.onnx")
    ap.add_argument("--models", type=int, default=2)
    args = ap.parse_args()
    models = sorted((HERE / "work" / "models").glob(args.pattern))[: args.models]
    if len(models) < args.models:
        sys.exit(f"bench_ray: {len(models)} trained model(s) match {args.pattern}: train them first (RESULTS.md, Run)")
    spec = (HERE / "sweep.toml").read_text().split("\n[[part]]")[0]  # the models' jobs, not the checkpoints'
    listed = ", ".join(f'"work/models/{m.name}"' for m in models)
    spec = spec.replace('models = ["work/models/*__s*.onnx"]', f"models = [{listed}]")
    with tempfile.TemporaryDirectory(prefix="qaudit-bench-ray-") as tmp:
        sweep = HERE / f".bench_ray_{Path(tmp).name}.toml"  # beside sweep.toml: its paths are relative to it
        sweep.write_text(spec)
        try:
            seconds, found = {}, {}
            for mode in ("local", "ray"):
                out = Path(tmp) / mode
                cmd = [sys.executable, "-m", "qaudit", "sweep", str(sweep), "--out", str(out), "--quiet"]
                cluster = Cluster(cpus=1, worker_cpus=1) if mode == "ray" else None
                try:
                    if cluster:
                        cmd += ["--ray-address", cluster.address]
                    t0 = time.perf_counter()
                    p = subprocess.run(cmd, env=loopback_env() if cluster else None, capture_output=True, text=True)
                    seconds[mode] = time.perf_counter() - t0
                finally:
                    if cluster:
                        cluster.stop()
                if p.returncode not in (0, 1):  # 1: a gate failed, the rows are still there
                    sys.exit(f"bench_ray: the {mode} sweep failed (exit {p.returncode}): {p.stderr[-1000:]}")
                found[mode] = rows(out)
        finally:
            sweep.unlink()
    n = len(found["local"])
    same = {k: v[0] for k, v in found["local"].items()} == {k: v[0] for k, v in found["ray"].items()}
    for mode in ("local", "ray"):
        per_job = sorted(s for _, s in found[mode].values())
        print(f"{mode:5s} {n} jobs in {seconds[mode]:6.1f} s (per job {per_job[0]:.1f}-{per_job[-1]:.1f} s)")
    print(f"ray / local: {seconds['ray'] / seconds['local']:.2f}; rows identical but seconds: {same}")


if __name__ == "__main__":
    main()
