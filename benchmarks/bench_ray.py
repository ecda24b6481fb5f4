"""Benchmark: qaudit on a Ray cluster against the same work run locally (issue 21 item 5).

One run measures, on this machine, with a two-node Ray cluster on loopback
addresses (tests/distributed/cluster.py: head 127.0.0.2, worker node 127.0.0.3,
one CPU each, so two Ray worker processes):

1. a sweep of 8 models of the init study (studies/init: 4 architectures x 2
   initializations, trained here for one epoch; the training is set-up, not
   timed): sequential (``qaudit sweep``), ``--workers 2`` (local processes) and
   ``--ray-address`` (one task per model);
2. one audit of PP-OCRv4 det at 320x320, N = 512 (samples/realworld/build.py,
   evaluation data = calibration data as in bench_audit.py): local, and sharded
   with ``--ray-address`` over one and over two worker CPUs (the shard scaling),
   and over two with ``--ray-shared-dir`` (models and batches by path, not through
   the object store; ``--no-shared-dir`` leaves it out).

Each run is a ``python -m qaudit`` child. Wall time is the child's; peak RSS is
each process's own high-water mark (``VmHWM`` in /proc, sampled every 0.2 s):
the driver, each pool or Ray worker process that ran qaudit, and Ray's own
daemons (raylet, GCS, ...) summed. Every byte stays on loopback. The machine's
load average is recorded before and after each run (a shared machine makes the
walls noisy).

The figures go to ``benchmarks/results/ray.json`` (every measurement) and
``benchmarks/results/ray.md`` (the table of docs/distributed.md#benchmark, to
paste there), or beside ``--out``; the table is printed too.

    python benchmarks/bench_ray.py                       # N = 512; needs the realmodels, init-study and ray extras
    python benchmarks/bench_ray.py --n 32 --out /tmp/ray.json   # a smoke run of every step (about 5 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.distributed.cluster import Cluster, loopback_env  # noqa: E402

ARCHS = ("conv_bn", "conv", "dwsep_bn", "dwsep")
INITS = ("he_normal", "glorot_uni_6")


class Watch:
    """Peak RSS (VmHWM) of every process that matters, sampled until :meth:`stop`."""

    def __init__(self, root_pid: int, cluster_tmp: str | None):
        self.root, self.tmp = root_pid, cluster_tmp
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _kind(self, pid: int, cmd: str, parents: dict) -> str | None:
        p = pid
        while p > 1:
            if p == self.root:
                return "driver" if pid == self.root else "local worker"
            p = parents.get(p, 1)
        if cmd.startswith("ray::"):
            return "ray worker"
        if self.tmp and self.tmp in cmd:
            return "ray daemons"
        return None

    def _run(self):
        while not self._stop.is_set():
            parents, cmds = {}, {}
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        cmds[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
            for pid, cmd in cmds.items():
                kind = self._kind(pid, cmd, parents)
                if kind is None:
                    continue
                try:
                    with open(f"/proc/{pid}/status") as f:
                        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
                except (OSError, StopIteration):
                    continue
                old = self.peak.get(pid, (kind, 0))
                self.peak[pid] = (kind if not cmd.startswith("ray::IDLE") else old[0], max(old[1], hwm))
            self._stop.wait(0.2)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        out: dict[str, list[int]] = {}
        for kind, kib in self.peak.values():
            out.setdefault(kind, []).append(kib // 1024)
        summary = {k: sorted(v, reverse=True) for k, v in out.items() if k != "ray daemons"}
        if "ray daemons" in out:
            summary["ray daemons (sum)"] = [sum(out["ray daemons"])]
        return summary


def run(label: str, args: list[str], env: dict, cluster_tmp: str | None = None) -> dict:
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "qaudit", *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    watch = Watch(p.pid, cluster_tmp)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    rss = watch.stop()
    if p.returncode not in (0, 1):
        raise SystemExit(f"{label}: exit {p.returncode}: {err[-2000:]}")
    ray_workers = [m for m in rss.get("ray worker", []) if m >= IDLE_MB]  # the workers that ran qaudit
    print(f"{label:<44} {wall:8.1f} s   peak RSS MB: " + ", ".join(f"{k} {v}" for k, v in rss.items()), flush=True)
    load = [load_before, round(os.getloadavg()[0], 2)]
    return {"label": label, "wall_s": round(wall, 2), "peak_rss_mb": rss, "busy_ray_workers": len(ray_workers),
            "load_avg_1min": load}  # fmt: skip


#: the sweep of the benchmark: the 8 models with the init study's first-run audit settings (one setting
#: per model; the study's own sweep.toml grids 4 quantizers x 5 calibration trials over its seeded models)
SWEEP = """models = ["work/models/*.onnx"]
calib = "work/data/calib.npy"
eval = "work/data/test.npy"
labels = "work/data/test_labels.npy"
batch_size = 250
clip_percentile = 1.0
format = "qdq"
activation_type = "uint8"
weight_type = "uint8"
per_channel = false
calibrate_method = "percentile"
percentile = 98.0
calib_symmetric = false
"""


def train_models(work: Path, env: dict) -> None:
    names = ",".join(f"{a}__{i}" for a in ARCHS for i in INITS)
    if len(list((work / "models").glob("*.onnx"))) >= len(ARCHS) * len(INITS):
        return
    t = time.perf_counter()
    cmd = [sys.executable, str(REPO / "studies" / "init" / "study.py"), "--only", names, "--epochs", "1",
           "--work", str(work), "--out", str(work / "study-out"), "--no-plots"]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    print(f"  trained {len(ARCHS) * len(INITS)} init-study models (1 epoch) in {time.perf_counter() - t:.0f} s")


def det_inputs(work: Path, n: int) -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("realworld_build", REPO / "samples" / "realworld" / "build.py")
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    out = work / f"det_n{n}"
    calib = out / "det" / "calib"
    if not (calib.is_dir() and any(calib.glob("*.npy"))):
        t = time.perf_counter()
        b.build(out, only=("det",), n_calib=n, n_eval=0)
        print(f"  built det N={n} in {time.perf_counter() - t:.0f} s")
    return b.model_path(out / "det"), calib


def capture_seconds(report: Path) -> dict:
    d = json.loads(report.read_text())
    return {"phases": d["meta"]["phase_seconds"], "ray": d["meta"].get("ray")}


#: a Ray worker process below this peak RSS (MB) ran no qaudit task: an idle worker Ray started
IDLE_MB = 150


def rss_text(rss: dict) -> str:
    """``driver 620, workers 1,000, 978, Ray daemons 324 (sum)``: the busy processes' peaks, in MB."""
    parts = [f"driver {rss['driver'][0]:,}"] if rss.get("driver") else []
    workers = [m for k in ("local worker", "ray worker") for m in rss.get(k, []) if m >= IDLE_MB]
    idle = [m for m in rss.get("ray worker", []) if m < IDLE_MB]
    if workers:
        parts.append(("worker " if len(workers) == 1 else "workers ") + ", ".join(f"{m:,}" for m in workers))
    if idle:
        parts.append(f"idle Ray workers ~{round(sum(idle) / len(idle))} each")
    if rss.get("ray daemons (sum)"):
        parts.append(f"Ray daemons {rss['ray daemons (sum)'][0]:,} (sum)")
    return ", ".join(parts)


def table(results: dict) -> str:
    """The Markdown table of docs/distributed.md#benchmark."""
    n = results["n"]
    lines = [f"Measured by `python benchmarks/bench_ray.py --n {n}` ({results['machine']['cores']} cores, load average "
             f"{results['machine']['load_avg_1min_start']} at the start; each run's before/after in the JSON).", "",
             "| run | wall | peak RSS per process (MB) |", "|---|---:|---|"]  # fmt: skip
    for r in results["runs"]:
        label = r["label"].replace("det audit", f"PP-OCRv4 det@320, N = {n}")
        label = label.replace("sweep,", f"sweep of {results['models']} init-study models,")
        wall = f"{r['wall_s']:.1f} s"
        if "report" in r:
            ph = r["report"]["phases"]
            wall += f" (calibrate {ph['calibrate']:.1f}, capture {ph['capture']:.1f})"
        lines.append(f"| {label} | {wall} | {rss_text(r['peak_rss_mb'])} |")
    sc = results["scaling"]
    lines += ["", f"Capture: local {sc['local_capture_s']:.1f} s, 1 Ray worker {sc['ray_capture_1_s']:.1f} s, "
              f"2 Ray workers {sc['ray_capture_2_s']:.1f} s (speed-up {sc['capture_speedup_1_to_2']}x); the driver's "
              f"part (everything but the capture) {sc['local_other_s']:.1f} s locally."]  # fmt: skip
    if "shared_capture_2_s" in sc:
        lines[-1] += f" With `--ray-shared-dir`: capture {sc['shared_capture_2_s']:.1f} s on 2 workers."
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work-ray", help="models, data, reports")
    ap.add_argument("--n", type=int, default=512, help="PP-OCR det samples (default 512; at least 16)")
    ap.add_argument("--quick", action="store_true", help="N = 64 and 4 models")
    ap.add_argument("--no-shared-dir", action="store_true", help="leave out the det audit with --ray-shared-dir")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ray.json",
                    help="write every measurement as JSON, and the table beside it as .md (default: "
                    "benchmarks/results/ray.json)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.n < 16:  # each worker CPU gets two shards of whole batches
        ap.error("--n must be at least 16")
    global ARCHS, INITS
    if args.quick:
        args.n, ARCHS, INITS = 64, ARCHS[:2], INITS
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = loopback_env()
    env.update(NO_COLOR="1", COLUMNS="200")
    env.pop("QAUDIT_KERNELS", None)
    results: dict = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                                 "load_avg_1min_start": round(os.getloadavg()[0], 2)}, "n": args.n,
                     "models": len(ARCHS) * len(INITS), "runs": []}  # fmt: skip
    started = time.perf_counter()

    train_models(work / "init", env)
    sweep = work / "init" / "sweep.toml"
    sweep.write_text(SWEEP)  # work/... relative to it
    (work / "init" / "work").mkdir(exist_ok=True)
    for sub in ("models", "data"):
        link = work / "init" / "work" / sub
        if not link.exists():
            link.symlink_to(work / "init" / sub)
    det_model, det_calib = det_inputs(work, args.n)

    print(f"\nsweep of {len(ARCHS) * len(INITS)} init-study models; PP-OCRv4 det@320 N={args.n}\n", flush=True)
    runs = results["runs"]
    runs.append(run("sweep, sequential", ["sweep", str(sweep), "--json", str(work / "sweep-seq.json")], env))
    runs.append(run("sweep, --workers 2", ["sweep", str(sweep), "--workers", "2"], env))
    det = [str(det_model), "--calib", str(det_calib)]
    runs.append(run("det audit, local", [*det, "--json", str(work / "det-local.json")], env))
    runs[-1]["report"] = capture_seconds(work / "det-local.json")
    for cpus in (1, 2):
        cluster = Cluster(cpus=1, worker_cpus=cpus - 1, object_store_mb=1500)
        try:
            cenv = {**env, **cluster.env}
            tmp = str(cluster.tmp)
            if cpus == 2:
                runs.append(run("sweep, --ray-address (2 workers)", ["sweep", str(sweep), "--ray-address",
                                                                    cluster.address], cenv, tmp))  # fmt: skip
            out = work / f"det-ray{cpus}.json"
            runs.append(run(f"det audit, --ray-address ({cpus} worker{'s' * (cpus > 1)})",
                            [*det, "--ray-address", cluster.address, "--json", str(out)], cenv, tmp))  # fmt: skip
            runs[-1]["report"] = capture_seconds(out)
            if cpus == 2 and not args.no_shared_dir:  # both nodes see this machine's files
                shared = work / "shared"
                shared.mkdir(exist_ok=True)
                out = work / "det-ray2-shared.json"
                runs.append(run("det audit, --ray-address --ray-shared-dir (2 workers)",
                                [*det, "--ray-address", cluster.address, "--ray-shared-dir", str(shared), "--json",
                                 str(out)], cenv, tmp))  # fmt: skip
                runs[-1]["report"] = capture_seconds(out)
        finally:
            cluster.stop()
    # the arithmetic: the driver's part (everything but the capture) stays; the capture divides
    local = next(r for r in runs if r["label"] == "det audit, local")["report"]["phases"]
    c1 = next(r for r in runs if "1 worker)" in r["label"])["report"]["phases"]["capture"]
    c2 = next(r for r in runs if "2 workers)" in r["label"] and "det" in r["label"])["report"]["phases"]["capture"]
    results["scaling"] = {
        "local_capture_s": local["capture"],
        "local_other_s": round(sum(v for k, v in local.items() if k != "capture"), 2),
        "ray_capture_1_s": c1,
        "ray_capture_2_s": c2,
        "capture_speedup_1_to_2": round(c1 / c2, 2) if c2 else None,
        "ray_capture_overhead_1_s": round(c1 - local["capture"], 2),
    }
    shared_run = next((r for r in runs if "shared-dir" in r["label"]), None)
    if shared_run is not None:
        results["scaling"]["shared_capture_2_s"] = shared_run["report"]["phases"]["capture"]
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results["scaling"], indent=1))
    md = table(results)
    print("\n" + md + f"\n(whole benchmark: {results['seconds']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
