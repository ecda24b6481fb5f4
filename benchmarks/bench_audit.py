"""Benchmark qaudit's full audit against ONNX Runtime's own quantization tools.

    python benchmarks/bench_audit.py [--models cls det] [--n 128 512] [--quick] [--out results.json]

Builds realistic inputs for rapidocr's PP-OCR models with
``samples/realworld/build.py`` (cls 3x48x192 text-line crops, det 320x320
scenes), then runs every contender of ``benchmarks/contenders.py`` in its own
process on the same N samples (the evaluation data *is* the calibration data,
so every contender does comparable work) and prints one table: wall time and
peak RSS per model, N and contender, and the ratios the issue "Fast,
memory-flat audits" targets.

Measurement, from outside the contender's process:

* wall time: ``time.perf_counter`` around start and exit of the process
  (interpreter start-up and imports included, for every contender alike);
* peak RSS: ``ru_maxrss`` of the child from ``os.wait4`` (KiB on Linux; the
  kernel's high-water mark of the process, and of any children it waited for);
* a watchdog thread polls the RSS of the child and all its descendants
  (``VmRSS`` in ``/proc/PID/status``) every 50 ms and kills the process group
  past ``--mem-cap-gb`` (default 8 GiB), and past ``--timeout`` seconds
  (default 900). Such runs are recorded as "killed at cap" / "timeout" with
  the time at which they were killed, not as a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONTENDERS = ("fp32", "ort_percentile", "ort_percentile_strided", "ort_qdq_loss_debug", "qaudit")
MODELS = ("cls", "det")
GiB = 1 << 30
MB = 1_000_000
NOISY = 0.2  # cores used by other processes during a run, above which its timing is flagged (and not reused)

# The targets
TARGET_VS_ORT = 1.0  # qaudit wall / ort_percentile wall
TARGET_VS_FP32 = 12.0  # qaudit wall / fp32 wall
TARGET_DET128_RSS = 1.5e9  # bytes
TARGET_RSS_GROWTH = 0.10  # N=128 -> N=512


# -- the machine -----------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for mod in ("onnxruntime", "numpy", "onnx"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "qaudit": _qaudit_revision(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "ram_bytes": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def _qaudit_revision() -> str | None:
    """The commit of this repository, and whether qaudit/ has uncommitted changes (the figures depend on both)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "qaudit"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    n = len(dirty.splitlines())
    return head + (f" + {n} uncommitted change(s) in qaudit/" if n else "")


# -- data ------------------------------------------------------------------
def _build_module():
    spec = importlib.util.spec_from_file_location("realworld_build", REPO / "samples" / "realworld" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_inputs(work: Path, model: str, n: int) -> tuple[Path, Path]:
    """``(model path, calibration folder)`` of ``model`` with ``n`` samples; built once per work folder."""
    b = _build_module()
    out = work / "data" / f"{model}_n{n}"
    subject = out / model
    calib = subject / "calib"
    if not (calib.is_dir() and any(calib.glob("*.npy"))):
        t = time.perf_counter()
        b.build(out, only=(model,), n_calib=n, n_eval=0)  # evaluation data = calibration data
        print(f"  built {model} N={n} in {time.perf_counter() - t:.1f} s", flush=True)
    return b.model_path(subject), calib


def even_batch(n: int, batch: int) -> int:
    """The largest batch <= ``batch`` that divides ``n``.

    ORT's ``quantize_static`` without ``CalibStridedMinMax`` stacks the outputs
    of all batches with ``np.asarray``, which fails on a shorter last batch
    ("inhomogeneous shape", onnxruntime 1.32); the other contenders get equal
    batches so that they all do the same work the same way.
    """
    return max(b for b in range(1, max(1, min(batch, n)) + 1) if n % b == 0)


# -- running one contender -------------------------------------------------
def _tree_rss(pid: int, include_root: bool = True) -> int:
    """RSS in bytes of ``pid`` (unless not ``include_root``) and all its descendants (0 once they are gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            if p != pid or include_root:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            pass
    return total


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat), or None."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(f[i] for i in (0, 1, 2, 5, 6) if i < len(f))  # user nice system irq softirq (guest is in user)
    return busy / os.sysconf("SC_CLK_TCK")


def wait_idle(max_wait: float, threshold: float, window: float = 3.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores; returns their last load."""
    t0 = time.perf_counter()
    while True:
        a = _busy_seconds()
        time.sleep(window)
        b = _busy_seconds()
        load = (b - a) / window if a is not None and b is not None else 0.0
        if load < threshold or time.perf_counter() - t0 > max_wait:
            return load
        print(f"    waiting: other processes use {load:.1f} cores", flush=True)


# The process that starts a contender must be small: on Linux a child's ru_maxrss
# includes the high-water RSS of the process it was forked from (exec records
# the old address space's peak in the new process's maxrss), so a contender
# forked from this benchmark, which holds built images, would report at least
# the benchmark's own peak. A minimal launcher (``python -I -S``: no site, a
# few MB) forks and execs the contender, and reports the contender's own
# rusage and wall time.
_LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"pid": pid, "wall": wall, "code": code, "maxrss": ru.ru_maxrss, "utime": ru.ru_utime, "stime": ru.ru_stime}, f)
sys.exit(code if code >= 0 else 128 - code)
"""


def measure(cmd: list[str], log: Path, cwd: Path, mem_cap: int, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` (output to ``log``) under the watchdog; wall time, CPU time, exit code, peak RSS from the OS.

    ``cmd`` runs as the child of a minimal launcher (see ``_LAUNCHER``), which
    reports its ``os.wait4`` rusage. ``other_cores``: the average number of
    cores that *other* processes kept busy during the run (machine busy time
    from /proc/stat minus the run's CPU time, over the wall time): above
    ``NOISY`` the timings are not clean.
    """
    rusage_file = Path(log).with_name("rusage.json")
    rusage_file.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(rusage_file), *cmd]
    with open(log, "wb") as out:
        busy0 = _busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            launcher, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(cwd), env=env
        )
        state = {"killed": None, "killed_rss": None, "polled_peak": 0}
        lock, exited = threading.Lock(), threading.Event()

        def watchdog():
            while not exited.wait(0.05):
                rss = _tree_rss(proc.pid, include_root=False)  # the contender and its children, not the launcher
                state["polled_peak"] = max(state["polled_peak"], rss)
                why = "mem_cap" if rss > mem_cap else "timeout" if time.perf_counter() - t0 > timeout else None
                if why:
                    with lock:
                        # the launcher is not reaped yet: its pid (= process group) is still ours
                        if not exited.is_set():
                            state["killed"], state["killed_rss"] = why, rss
                            try:
                                os.killpg(proc.pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    return

        dog = threading.Thread(target=watchdog, daemon=True)
        dog.start()
        # wait without reaping, stop the watchdog, then reap
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        elapsed = time.perf_counter() - t0
        with lock:
            exited.set()
        proc.wait()
        dog.join()
    busy1 = _busy_seconds()
    try:
        ru = json.loads(rusage_file.read_text())
    except (OSError, ValueError):
        ru = None  # killed by the watchdog (the launcher with it)
    if ru:
        # ru_maxrss is in KiB on Linux (bytes on macOS)
        peak = ru["maxrss"] * (1 if sys.platform == "darwin" else 1024)
        wall, cpu, code = ru["wall"], ru["utime"] + ru["stime"], ru["code"]
    else:
        peak, wall, cpu, code = state["polled_peak"] or None, elapsed, None, proc.returncode
    # a killed run has no rusage (its launcher died with it): its own CPU time is unknown, so is the others'
    other = (
        max(0.0, (busy1 - busy0 - cpu) / elapsed)
        if cpu is not None and busy0 is not None and busy1 is not None and elapsed > 0
        else None
    )
    return {
        "elapsed_s": wall,
        "cpu_s": cpu,
        "other_cores": other,
        "exit_code": code,
        "peak_rss_bytes": peak,
        "polled_peak_rss_bytes": state["polled_peak"],
        "killed": state["killed"],
        "killed_rss_bytes": state["killed_rss"],
    }


def _env_with_repo() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_contender(
    name: str,
    model: Path,
    data: Path,
    work: Path,
    batch_size: int | None,
    mem_cap: int,
    timeout: float,
    label: str | None = None,
    idle: tuple[float, float] | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    """Run one contender of ``contenders.py`` in its own process, measured from outside.

    ``batch_size`` None: qaudit chooses (its report says what; ``qaudit_batch_size``).
    ``extra``: more arguments of ``contenders.py`` (``--calibrate-method M``).
    """
    label = label or name
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "contenders.py"), name, str(model), str(data), "--work", str(work)]
    cmd += ["--batch-size", str(batch_size)] if batch_size else []
    cmd += list(extra)
    log = work / "run.log"
    if idle is not None:
        wait_idle(*idle)
    m = measure(cmd, log, work, mem_cap, timeout)
    text = log.read_text(errors="replace")
    phases = None
    for line in text.splitlines():
        if line.startswith("BENCH_PHASES "):
            phases = json.loads(line[len("BENCH_PHASES ") :])
    chosen = kernels = None
    if name == "qaudit" and m["killed"] is None and (work / "qaudit.json").exists():
        try:
            rep = json.loads((work / "qaudit.json").read_text())
            phases = {"report_seconds": rep["meta"]["seconds"], **rep["meta"].get("phase_seconds", {})}
            chosen = rep["settings"].get("batch_size")
            kernels = rep["meta"].get("kernels")
        except (ValueError, KeyError, AttributeError):
            pass
    if m["killed"]:
        status = {"mem_cap": "killed at cap", "timeout": "timeout"}[m["killed"]]
    elif m["exit_code"] == 0 or (name == "qaudit" and m["exit_code"] == 1):  # qaudit: 1 = a gate failed, audit complete
        status = "ok"
    else:
        status = f"failed (exit {m['exit_code']})"
    res = {
        "contender": label,
        "name": name,
        "batch_size": batch_size or chosen,
        "batch_size_auto": batch_size is None,
        "qaudit_batch_size": chosen,
        "qaudit_kernels": kernels,  # "c" or "numpy": qaudit/pipeline/kernels.py
        "status": status,
        "wall_s": m["elapsed_s"] if status == "ok" else None,
        **{k: v for k, v in m.items() if k != "killed"},
        "phases": phases,
    }
    if status.startswith("failed"):
        res["error_tail"] = text.strip().splitlines()[-3:]
    return res


def profile_qaudit(
    model: Path, data: Path, work: Path, batch_size: int | None, mem_cap: int, timeout: float, top: int = 15
) -> dict:
    """Run the qaudit CLI once under cProfile (and the watchdog); the ``top`` functions by tottime, as pstats prints them."""
    import io
    import pstats

    work.mkdir(parents=True, exist_ok=True)
    prof = work / "qaudit.prof"
    cmd = [
        sys.executable,
        "-m",
        "cProfile",
        "-o",
        str(prof),
        "-m",
        "qaudit",
        str(model),
        "--calib",
        str(data),
        "--json",
        str(work / "qaudit.json"),
        "--html",
        str(work / "qaudit.html"),
        "--quiet",
        *(["--batch-size", str(batch_size)] if batch_size else []),
    ]
    m = measure(cmd, work / "run.log", work, mem_cap, timeout, env=_env_with_repo())
    if not prof.exists():
        return {**m, "text": f"no profile: the run ended with exit code {m['exit_code']} (killed: {m['killed']})"}
    buf = io.StringIO()
    pstats.Stats(str(prof), stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    # no absolute paths: file names relative to the repository / site-packages
    for root in sorted({str(REPO), *(p for p in sys.path if p)}, key=len, reverse=True):
        if root and root != os.sep:
            text = text.replace(root + os.sep, "")
    text = text[text.find("   Ordered by") :] if "Ordered by" in text else text
    head = f"wall under cProfile: {m['elapsed_s']:.1f} s, peak RSS {_mb(m['peak_rss_bytes'])} MB"
    return {**m, "text": head + "\n" + text.rstrip() + "\n"}


# -- the table -------------------------------------------------------------
def _mb(b):
    return f"{b / MB:,.0f}" if b else "-"


def _fmt_ratio(r):
    if r is None:
        return "n/a"
    v, bound = r
    return f"{bound}{v:.2f}"


def ratios(results: list[dict], cap: int) -> list[dict]:
    """The issue's ratios per model and N (``bound`` '<' when the denominator was killed: the ratio is smaller)."""
    by = {}
    for r in results:
        by.setdefault((r["model"], r["n"]), {})[r["contender"]] = r
    out = []
    for (model, n), rs in by.items():
        q = rs.get("qaudit")
        row = {"model": model, "n": n}
        for key, other, target in (
            ("qaudit_vs_ort_percentile", "ort_percentile", TARGET_VS_ORT),
            ("qaudit_vs_fp32", "fp32", TARGET_VS_FP32),
        ):
            o = rs.get(other)
            if not q or q["wall_s"] is None or not o:
                row[key] = None
                continue
            if o["wall_s"] is not None:
                v, bound = q["wall_s"] / o["wall_s"], ""
                cpu = q["cpu_s"] / o["cpu_s"] if q.get("cpu_s") and o.get("cpu_s") else None
            elif o["status"] in ("killed at cap", "timeout"):
                v, bound = q["wall_s"] / o["elapsed_s"], "<"  # the other would have taken longer than it ran
                cpu = None
            else:
                row[key] = None
                continue
            row[key] = {"value": v, "bound": bound, "target": target, "met": v <= target, "cpu_ratio": cpu}
        out.append(row)
    return out


def summary(results: list[dict]) -> dict:
    q = {(r["model"], r["n"]): r for r in results if r["contender"] == "qaudit" and r["status"] == "ok"}
    s = {}
    det128 = q.get(("det", 128))
    if det128:
        s["qaudit_det_n128_peak_rss"] = {
            "bytes": det128["peak_rss_bytes"],
            "target": TARGET_DET128_RSS,
            "met": det128["peak_rss_bytes"] < TARGET_DET128_RSS,
        }
    for model in MODELS:
        ns = sorted(n for (m, n) in q if m == model)
        if len(ns) >= 2:
            a, b = q[(model, ns[0])], q[(model, ns[-1])]
            g = b["peak_rss_bytes"] / a["peak_rss_bytes"] - 1
            s[f"qaudit_{model}_rss_growth_n{ns[0]}_to_n{ns[-1]}"] = {
                "growth": g,
                "target": TARGET_RSS_GROWTH,
                "met": g <= TARGET_RSS_GROWTH,
            }
    return s


def table(results: list[dict], cap: int) -> str:
    head = ("model", "N", "contender", "batch", "wall s", "CPU s", "peak RSS MB", "note")
    rows = []
    for r in results:
        if r["status"] == "ok":
            wall, rss, note = f"{r['wall_s']:.1f}", _mb(r["peak_rss_bytes"]), ""
        elif r["status"] == "killed at cap":
            wall, rss = "killed at cap", f"killed >{cap / GiB:g} GiB"
            note = f"killed after {r['elapsed_s']:.1f} s"
        elif r["status"] == "timeout":
            wall, rss, note = "timeout", _mb(r["peak_rss_bytes"]), f"killed after {r['elapsed_s']:.0f} s"
        elif r["status"] == "skipped":
            wall, rss, note = "skipped", "-", r.get("reason", "")
        else:
            wall, rss, note = r["status"], _mb(r["peak_rss_bytes"]), " | ".join(r.get("error_tail", []))[-80:]
        batch = "auto" if r.get("batch_size_auto") and not r.get("batch_size") else str(r.get("batch_size") or "-")
        batch += " (auto)" if r.get("batch_size_auto") and r.get("batch_size") else ""
        if r.get("qaudit_kernels"):
            note = (note + "; " if note else "") + f"{r['qaudit_kernels']} kernels"
        if (r.get("other_cores") or 0) > NOISY:
            note = (note + "; " if note else "") + f"other processes used {r['other_cores']:.1f} cores"
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-"
        rows.append((r["model"], str(r["n"]), r["contender"], batch, wall, cpu, rss, note))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    right = {1, 3, 4, 5, 6}

    def fmt(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [fmt(head), fmt(tuple("-" * w for w in widths))]
    prev = None
    for row in rows:
        if prev is not None and row[:2] != prev:
            lines.append("")
        lines.append(fmt(row))
        prev = row[:2]

    lines.append("")
    lines.append("Targets (qaudit with its default batch size):")
    for r in ratios(results, cap):
        for key, what in (
            ("qaudit_vs_ort_percentile", "wall qaudit / ort_percentile"),
            ("qaudit_vs_fp32", "wall qaudit / fp32"),
        ):
            v = r[key]
            if v is None:
                lines.append(f"  {r['model']:<4} N={r['n']:<4} {what:<30} n/a")
                continue
            verdict = "met" if v["met"] else "NOT met"
            cpu = f"; CPU time ratio {v['cpu_ratio']:.2f}" if v.get("cpu_ratio") is not None else ""
            lines.append(
                f"  {r['model']:<4} N={r['n']:<4} {what:<30} {_fmt_ratio((v['value'], v['bound'])):>7}  (target <= {v['target']:g}: {verdict}{cpu})"
            )
    for key, v in summary(results).items():
        verdict = "met" if v["met"] else "NOT met"
        if "growth" in v:
            lines.append(f"  {key:<45} {v['growth'] * 100:+.1f}%  (target <= +{v['target'] * 100:g}%: {verdict})")
        else:
            lines.append(f"  {key:<45} {v['bytes'] / MB:,.0f} MB  (target < {v['target'] / MB:,.0f} MB: {verdict})")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--n", nargs="+", type=int, default=[128, 512], help="numbers of samples (multiples of 16)")
    ap.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    ap.add_argument("--quick", action="store_true", help="a smoke run: cls only, N=32")
    ap.add_argument(
        "--batch-size",
        type=int,
        help="batch size of every contender; default: qaudit's automatic choice, which the others then use",
    )
    ap.add_argument(
        "--qaudit-batch-sizes",
        nargs="*",
        type=int,
        default=[],
        metavar="B",
        help="also run qaudit with these batch sizes (rows 'qaudit bs=B')",
    )
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="MODEL:N:CONTENDER",
        help="runs to leave out (to fit a time budget); '*' matches any model, N or contender",
    )
    ap.add_argument("--mem-cap-gb", type=float, default=8.0, help="kill a contender whose RSS exceeds this (GiB)")
    ap.add_argument("--timeout", type=float, default=900.0, help="kill a contender after this many seconds")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=300.0,
        metavar="S",
        help="before each run, wait up to S seconds until other processes use < --idle-cores cores (0: don't wait)",
    )
    ap.add_argument("--idle-cores", type=float, default=0.3, help="see --wait-idle")
    ap.add_argument(
        "--profile",
        metavar="MODEL:N",
        help="also run qaudit once under cProfile on MODEL with N samples; print the top 15 by tottime",
    )
    ap.add_argument(
        "--profile-mem-cap-gb", type=float, help="memory cap of the profiled run (GiB); default: 75%% of RAM"
    )
    ap.add_argument(
        "--work", type=Path, help="folder for data, logs and outputs (kept); default: a temporary folder, removed"
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --work: reuse the result of a run already made there (same batch and cap, "
        "other processes below 0.2 cores) instead of running it again",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.n = ["cls"], [32]
    for n in args.n:
        if n % 16:
            ap.error(f"--n {n}: build.py writes files of 16 samples; use a multiple of 16")
    if sys.platform != "linux":
        print("warning: peak RSS and the watchdog need Linux (/proc, ru_maxrss in KiB)", file=sys.stderr)

    cap = int(args.mem_cap_gb * GiB)
    m = machine()
    print(f"qaudit: {m['qaudit']}", flush=True)
    print(
        f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"{(m['ram_bytes'] or 0) / GiB:.1f} GiB RAM, {m['platform']}, Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, numpy {m['numpy']}",
        flush=True,
    )
    print(
        f"memory cap {args.mem_cap_gb:g} GiB, timeout {args.timeout:g} s, "
        f"batch size {args.batch_size or 'automatic (qaudit chooses, the other contenders use its choice)'}",
        flush=True,
    )

    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="qaudit-bench-")
        work = Path(tmp)
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)

    def skipped(model, n, contender):
        for pat in args.skip:
            parts = pat.split(":")
            if len(parts) == 3 and all(p in ("*", v) for p, v in zip(parts, (model, str(n), contender))):
                return True
        return False

    idle = (args.wait_idle, args.idle_cores) if args.wait_idle > 0 else None
    # qaudit runs first in each group: without --batch-size the others use the batch it chose
    # (rounded down to a divisor of N: see even_batch)
    order = sorted(args.contenders, key=lambda c: c != "qaudit")
    extra = [("qaudit", f"qaudit bs={b}", b) for b in args.qaudit_batch_sizes]
    results, profile = [], None
    try:
        for model in args.models:
            for n in args.n:
                model_path, data = build_inputs(work, model, n)
                bs, group = args.batch_size, []
                for name, label, fixed in [(c, c, None) for c in order] + extra:
                    run_bs = fixed or bs
                    if skipped(model, n, label):
                        group.append(
                            {
                                "model": model,
                                "n": n,
                                "contender": label,
                                "name": name,
                                "batch_size": run_bs,
                                "status": "skipped",
                                "reason": "--skip",
                                "wall_s": None,
                                "peak_rss_bytes": None,
                            }
                        )
                        print(f"  {model} N={n} {label}: skipped", flush=True)
                        continue
                    if name != "qaudit" and not fixed:
                        run_bs = even_batch(n, bs or 32)
                    run_dir = work / "runs" / f"{model}_n{n}" / label.replace(" ", "_").replace("=", "")
                    saved = run_dir / "result.json"
                    r = json.loads(saved.read_text()) if args.reuse and saved.exists() else None
                    if (
                        r is not None
                        and r.get("batch_size_requested") == run_bs
                        and r.get("mem_cap_bytes") == cap
                        and (r.get("other_cores") or 0) <= NOISY
                    ):
                        print(f"  {model} N={n} {label}: reused {saved.relative_to(work)}", flush=True)
                    else:
                        r = run_contender(name, model_path, data, run_dir, run_bs, cap, args.timeout, label, idle)
                        r = {
                            "model": model,
                            "n": n,
                            "batch_size_requested": run_bs,
                            "mem_cap_bytes": cap,
                            "revision": m["qaudit"],
                            **r,
                        }
                        saved.write_text(json.dumps(r, indent=2) + "\n")
                    if label == "qaudit" and bs is None and r.get("qaudit_batch_size"):
                        bs = r["qaudit_batch_size"]
                    group.append(r)
                    print(
                        f"  {model} N={n} {label} (batch {r['batch_size'] or 'auto'}): {r['status']}, {r['elapsed_s']:.1f} s, "
                        f"peak RSS {_mb(r['peak_rss_bytes'])} MB",
                        flush=True,
                    )
                rank = {c: i for i, c in enumerate(CONTENDERS)}
                results += sorted(group, key=lambda r: rank.get(r["contender"], len(rank)))
        if args.profile:
            pm, pn = args.profile.split(":")
            model_path, data = build_inputs(work, pm, int(pn))
            pcap = (
                int(args.profile_mem_cap_gb * GiB)
                if args.profile_mem_cap_gb
                else int(0.75 * (m["ram_bytes"] or 16 * GiB))
            )
            if idle is not None:
                wait_idle(*idle)
            profile = profile_qaudit(
                model_path, data, work / "profile" / f"{pm}_n{pn}", args.batch_size, pcap, args.timeout
            )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(table(results, cap))
    if profile:
        print(
            f"\nqaudit under cProfile, {args.profile}, batch size {args.batch_size or 'automatic'}, top 15 by tottime:\n{profile['text']}"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "machine": m,
                    "settings": {
                        "mem_cap_bytes": cap,
                        "timeout_s": args.timeout,
                        "batch_size": args.batch_size,
                        "models": args.models,
                        "n": args.n,
                        "quantization": "QDQ, uint8/uint8, per-tensor, Percentile",
                    },
                    "results": results,
                    "ratios": ratios(results, cap),
                    "targets": summary(results),
                    "profile": profile,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
