"""``qaudit sweep SWEEP.toml``: many models x settings audited from one file, one table (docs/sweep.md).

A sweep file names ``models`` (paths or globs, relative to the file), the shared
data (``calib``, ``eval``, optional ``labels``), any audit setting of a config
file (docs/configuration.md) shared by every audit, a ``[grid]`` table whose keys
are audit settings and whose values are lists (every combination is one audit
of every model), and optional ``[gates]`` as in a config file. Each point is
checked as a config file is (:func:`qaudit.cli.settings.resolve`), before any
audit runs.

The audits run in this process, in ``--workers N`` local processes, or, with
``--ray-address``, as one Ray task per model x setting (:func:`run_jobs`: the
seam ``qaudit fix`` can hand its candidate verifications to). A model's error is
that model's one-line error in the table; the sweep goes on.
"""

from __future__ import annotations

import glob as globlib
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from qaudit.errors import ConfigError, QauditError

#: sweep-file keys besides the audit settings
SWEEP_KEYS = ("models", "grid", "gates", "part")
#: settings a sweep does not take from its file: the command's --json/--csv/--html name the outputs
NOT_IN_SWEEP = ("model", "output_model", "html", "json", "junit", "markdown", "quiet", "worst", "baseline", "workers")
#: the table's columns, in order (the CSV's header; the JSON's row keys)
COLUMNS = (
    "model", "setting", "status", "layers", "worst_layer", "worst_sqnr_db", "output", "sqnr_db", "qce",
    "top1_agreement", "acc_fp32", "acc_int8", "acc_drop_pct", "gates_failed", "seconds", "error",
)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One audit of a sweep: a model, one point of the grid, its configuration and gates."""

    index: int
    model: Path
    setting: str  # "key=value key=value" ("" without a grid)
    cfg: object  # AuditConfig
    gates: object  # GateConfig


@dataclass
class Outcome:
    """What one job gave: its table row, and the report (``None`` after an error)."""

    job: Job
    row: dict
    report: object = None


@dataclass(frozen=True)
class Sweep:
    path: Path
    jobs: tuple[Job, ...]
    grid_keys: tuple[str, ...] = field(default=())
    #: the file's ``ray_address`` (``--ray-address`` overrides it): one Ray task per job
    ray_address: str | None = None
    #: the file's ``ray_shared_dir`` (``--ray-shared-dir`` overrides it): the tasks read the files there
    ray_shared_dir: Path | None = None


def _toml(path: Path) -> dict:
    from qaudit.cli.settings import _read_toml

    return _read_toml(path)


def _value_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _models(models, where: str, base: Path) -> list[Path]:
    """The model files ``models`` (a path or glob, or a list of them, relative to ``base``) names."""
    if isinstance(models, str):
        models = [models]
    if not models or not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"'models' {where} must be a list of model paths or globs, e.g. models = [\"models/*.onnx\"]")
    paths: list[Path] = []
    for m in models:
        pattern = m if Path(m).is_absolute() else str(base / m)
        found = sorted(Path(p) for p in globlib.glob(pattern, recursive=True))
        if not found:
            raise ConfigError(f"'models' {where}: {m!r} matches no file")
        paths += [p for p in found if p not in paths]
    return paths


def _check_grid(grid, where: str, table: dict, label: str = "[grid]", scope: str = "at the top level") -> None:
    """``grid`` (the [grid] table ``label``) varies audit settings ``table`` (its scope's own keys) does not set."""
    from qaudit.cli.settings import OPTIONS_BY_NAME

    if not isinstance(grid, dict):
        raise ConfigError(f"{label} {where} must be a table of setting = [values]")
    for key, values in grid.items():
        if key in SWEEP_KEYS or key in NOT_IN_SWEEP or key not in OPTIONS_BY_NAME or key in ("calib", "eval"):
            raise ConfigError(f"{label} {where}: '{key}' is not an audit setting a sweep can vary")
        if OPTIONS_BY_NAME[key].group == "fix":  # every row would be the same audit
            raise ConfigError(
                f"{label} {where}: '{key}' is a setting of qaudit fix, which a sweep's audits do not read; remove it"
            )
        if key in table:
            raise ConfigError(f"{label} {where}: '{key}' is also set {scope}; set it in one place")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{label} {where}: '{key}' must be a non-empty list of values, e.g. {key} = [...]")


def load(path: Path) -> Sweep:
    """The jobs of the sweep file at ``path``, every point checked (a :class:`ConfigError` names the key).

    The top level's ``models`` and ``[grid]``, and each ``[[part]]``'s (its own ``models``, optional
    ``[part.grid]`` and settings over the top level's, its jobs' setting ``part=NAME ...``), in that order."""
    from qaudit.cli.settings import resolve

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; give a TOML file naming models, calib, eval and [grid]")
    table = _toml(path)
    base = path.resolve().parent
    where = f"in {path}"
    for key in NOT_IN_SWEEP:
        if key in table:
            hint = "list models in 'models'" if key == "model" else f"give qaudit sweep --{key} instead" if key in (
                "json", "html", "workers") else "a sweep writes one table (--csv, --json, --html)"  # fmt: skip
            raise ConfigError(f"'{key}' {where} does not apply to a sweep: {hint}")
    parts = table.get("part", [])
    if not isinstance(parts, list) or not all(isinstance(t, dict) for t in parts):
        raise ConfigError(f"'part' {where} must be tables: [[part]] with a name and its models")
    shared = {k: v for k, v in table.items() if k not in ("models", "grid", "part", "ray_address", "ray_shared_dir")}
    groups = []  # (the part's name or None, its where, its models, its grid, its settings)
    if "models" in table or not parts:
        groups.append((None, where, table.get("models"), table.get("grid", {}), {}))
    elif "grid" in table:
        raise ConfigError(f"[grid] {where} needs the top-level 'models' it varies; put it in a [[part]] as [part.grid]")
    names: set[str] = set()
    for i, part in enumerate(parts):
        name = part.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ConfigError(
                f"[[part]] {i + 1} {where} needs a name of letters, digits, '.', '_' or '-', e.g. name = \"checkpoints\""
            )
        if name in names:
            raise ConfigError(f"[[part]] '{name}' {where} is named twice; give each part its own name")
        names.add(name)
        pwhere = f"in [[part]] '{name}' of {path}"
        for key in (*NOT_IN_SWEEP, "ray_address", "ray_shared_dir", "part"):
            if key in part:
                raise ConfigError(
                    f"'{key}' {pwhere} does not apply to a part: set it for the whole sweep, at the top level"
                )
        settings = {k: v for k, v in part.items() if k not in ("name", "models", "grid")}
        groups.append((name, pwhere, part.get("models"), part.get("grid", {}), settings))
    keys: tuple[str, ...] = ()
    jobs: list[Job] = []
    for name, at, models, grid, own in groups:
        paths = _models(models, at, base)
        if name is None:
            _check_grid(grid, at, table)
        else:
            _check_grid(grid, at, own, "[part.grid]", "in the part")
        keys += tuple(k for k in grid if k not in keys)
        for point in itertools.product(*grid.values()) if grid else [()]:
            values = dict(zip(grid, point, strict=True))
            setting = " ".join(
                ([f"part={name}"] if name is not None else []) + [f"{k}={_value_text(v)}" for k, v in values.items()]
            )
            for model in paths:  # (each audit runs whole in its process or task: no ray_address of its own)
                merged = {**shared, **own, **values, "model": str(model)}
                settings = resolve("audit", {}, cwd=base, file=(path, merged))
                jobs.append(Job(len(jobs), model, setting, settings.audit_config(), settings.gates))
    address = table.get("ray_address")
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"'ray_address' {where} must be a string (an address, or auto)")
    shared_dir = table.get("ray_shared_dir")
    if shared_dir is not None and (not isinstance(shared_dir, str) or not shared_dir):
        raise ConfigError(f"'ray_shared_dir' {where} must be the path of a folder every Ray node sees")
    shared_dir = None if shared_dir is None else base / shared_dir
    return Sweep(path, tuple(jobs), keys, address, shared_dir)


# ----------------------------------------------------------- one job


def _finite(v):
    return v if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def summary_row(job: Job, report, seconds: float) -> dict:
    """The table row of a finished audit (a multi-run report: its first run)."""
    from qaudit.runs import MultiReport

    multi = report if isinstance(report, MultiReport) else None
    first = report.runs[0][1] if multi is not None else report
    rows = [r for r in first.layers if _finite(r.sqnr_db) is not None]
    worst = min(rows, key=lambda r: r.sqnr_db) if rows else None
    label = first.settings.get("label_output") if isinstance(first.settings, dict) else None
    outs = list(first.outputs)
    out = next((o for o in outs if o.name == label), None) or (outs[0] if outs else None)
    if multi is not None:
        failed = sum(len(r.gates.failures) for _, r in multi.runs if r.gates is not None)
        gated = any(r.gates is not None for _, r in multi.runs)
    else:
        failed = len(first.gates.failures) if first.gates is not None else 0
        gated = first.gates is not None
    return {
        "model": str(job.model),
        "setting": job.setting,
        "status": ("fail" if failed else "pass") if gated else "ok",
        "layers": len(first.layers),
        "worst_layer": worst.name if worst else None,
        "worst_sqnr_db": worst.sqnr_db if worst else None,
        "output": out.name if out else None,
        "sqnr_db": out.sqnr_db if out else None,
        "qce": out.qce if out else None,
        "top1_agreement": out.top1_agreement if out else None,
        "acc_fp32": out.acc_fp32 if out else None,
        "acc_int8": out.acc_int8 if out else None,
        "acc_drop_pct": out.acc_drop_pct if out else None,
        "gates_failed": failed if gated else None,
        "seconds": round(seconds, 3),
        "error": None,
    }


def error_row(job: Job, message: str, seconds: float) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(model=str(job.model), setting=job.setting, status="error", seconds=round(seconds, 3), error=message)
    return row


def run_job(job: Job) -> Outcome:
    """Audit and gate one job; an error of the model or its data is its row's one-line error."""
    import dataclasses

    from qaudit.gate import evaluate
    from qaudit.pipeline.audit import audit
    from qaudit.renderers.text import printable
    from qaudit.runs import MultiReport, evaluate_runs

    t0 = time.perf_counter()
    try:
        report = audit(job.cfg)
        if job.gates.configured(False):
            if isinstance(report, MultiReport):
                report = evaluate_runs(report, job.gates, None, None)
            else:
                report = dataclasses.replace(report, gates=evaluate(report, job.gates))
    except QauditError as e:
        return Outcome(job, error_row(job, printable(e), time.perf_counter() - t0))
    except Exception as e:  # a bug in qaudit: this row says so, the sweep goes on
        message = f"internal error: {type(e).__name__}: {printable(e)} (please report it)"
        return Outcome(job, error_row(job, message, time.perf_counter() - t0))
    return Outcome(job, summary_row(job, report, time.perf_counter() - t0), report)


# ----------------------------------------------------------- running many


def run_jobs(
    fn: Callable,
    items: Sequence,
    workers: int = 1,
    ray_address: str | None = None,
    on_done: Callable[[int], None] | None = None,
    on_result: Callable[[int, object], None] | None = None,
) -> list:
    """``[fn(item) for item in items]``, in this process (``workers`` 1), in ``workers`` local
    processes, or as one Ray task per item (``ray_address``; :func:`qaudit.distributed.map_tasks`).
    ``fn`` must be a module-level function and must not raise (it returns its errors).
    ``on_done(i)``: item ``i`` finished; ``on_result(i, result)``: its result, as soon as it is back
    (locally; with Ray, once :func:`qaudit.distributed.map_tasks` returns)."""
    if ray_address is not None:
        from qaudit.distributed import map_tasks

        results = map_tasks(ray_address, fn, items, on_done)
        if on_result is not None:
            for i, r in enumerate(results):
                on_result(i, r)
        return results
    if workers <= 1 or len(items) <= 1:
        out = []
        for i, item in enumerate(items):
            out.append(fn(item))
            if on_result is not None:
                on_result(i, out[-1])
            if on_done is not None:
                on_done(i)
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: dict[int, object] = {}
    # spawn: a fresh interpreter per worker (ONNX Runtime's threads do not survive a fork)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for f in as_completed(futures):
            i = futures[f]
            results[i] = f.result()
            if on_result is not None:
                on_result(i, results[i])
            if on_done is not None:
                on_done(i)
    return [results[i] for i in range(len(items))]


def run(
    sweep: Sweep,
    workers: int = 1,
    ray_address: str | None = None,
    on_done=None,
    out: Path | None = None,
    resume: bool = False,
    shared_dir: Path | None = None,
) -> list[Outcome]:
    """Every job's outcome, in the sweep's order. ``out``: a folder where each job's report and row are
    written as soon as it finishes (:class:`JobFiles`); ``resume``: the jobs already there are read
    back, not run again. ``shared_dir`` (with ``ray_address``): the tasks read the models and data by
    path there (:func:`qaudit.distributed.shared_jobs`), not through the object store."""
    files = JobFiles(sweep, Path(out), resume) if out is not None else None
    done = files.done() if files is not None else {}
    todo = [j for j in sweep.jobs if j.index not in done]
    results = dict(done)

    def keep(k: int, outcome: Outcome) -> None:
        outcome = replace(outcome, job=todo_chunk[k])
        results[outcome.job.index] = outcome
        if files is not None:
            files.save(outcome)

    if ray_address is not None:
        import contextlib

        from qaudit.distributed import SharedRun, cluster_cpus, connect, shared_jobs, shipped_jobs

        ray = connect(ray_address)  # before anything goes to the object store (ray.put would start a local Ray)
        # with --out, a chunk of jobs per cluster CPU at a time: each chunk's files land when it returns
        size = max(1, 2 * cluster_cpus(ray)) if files is not None else max(1, len(todo))
        with SharedRun(shared_dir) if shared_dir is not None else contextlib.nullcontext() as shared:
            for c in range(0, len(todo), size):
                todo_chunk = todo[c : c + size]
                # the capture of each audit stays in its task (one task per model x setting)
                plain = [replace(j, cfg=j.cfg.replace(ray_address=None, ray_shared_dir=None)) for j in todo_chunk]
                if shared is not None:
                    items, fn = shared_jobs(plain, shared), run_shared_job
                else:
                    items, fn = shipped_jobs(plain), run_shipped_job
                run_jobs(fn, items, ray_address=ray_address, on_done=on_done, on_result=keep)
    else:
        todo_chunk = todo
        run_jobs(run_job, todo, workers, on_done=on_done, on_result=keep)
    return [results[j.index] for j in sweep.jobs]


def _settings_text(cfg, gates) -> str:
    """An audit's settings as text, for a job's fingerprint: every field of its configuration but the
    model (its bytes are hashed) and the Ray address, paths resolved (the same sweep file read from
    another folder is the same audit), and its gates."""
    import dataclasses

    parts = []
    for f in dataclasses.fields(cfg):
        if f.name in ("model", "ray_address", "ray_shared_dir"):
            continue
        v = getattr(cfg, f.name)
        parts.append(f"{f.name}={v.resolve().as_posix() if isinstance(v, Path) else v!r}")
    return "\n".join(parts) + f"\ngates={gates!r}"


class JobFiles:
    """``qaudit sweep --out DIR``: per job, ``NAME.json`` (its qaudit JSON report, readable by
    ``qaudit report``) and then ``NAME.row.json`` (its table row and the job's fingerprint: the
    job is done once that file exists). NAME is the model's path relative to the sweep file and
    the job's setting, made file-safe, and a short hash of both. With ``resume`` a job whose row
    file holds the same fingerprint (the model file's bytes, the audit settings, the gates) is
    read back; a job whose row is an error runs again. Without ``resume`` the folder must hold
    no row files (a sweep's results are never overwritten)."""

    FORMAT = {"name": "qaudit-sweep-job", "version": 1}

    def __init__(self, sweep: Sweep, folder: Path, resume: bool):
        self.sweep, self.folder = sweep, folder
        self.base = sweep.path.resolve().parent
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--out {folder} is a file; give a folder for the sweep's per-audit files")
        if not resume and folder.is_dir() and any(folder.glob("*.row.json")):
            raise ConfigError(
                f"--out {folder} already holds a sweep's results; add --resume to continue that sweep, or give a new folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self._prints: dict[int, str] = {}

    def name(self, job: Job) -> str:
        import hashlib
        import re

        try:  # as the sweep file names it (a symlinked folder stays its link's name)
            rel = job.model.relative_to(self.base).as_posix()
        except ValueError:
            rel = job.model.resolve().as_posix()
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", rel.removesuffix(".onnx")).strip("_")
        if job.setting:
            slug += "__" + re.sub(r"[^A-Za-z0-9._=-]+", "_", job.setting)
        digest = hashlib.sha1((rel + "\0" + job.setting).encode()).hexdigest()[:8]
        return f"{slug}-{digest}"

    def fingerprint(self, job: Job) -> str:
        import hashlib

        if job.index not in self._prints:
            h = hashlib.sha256(job.model.read_bytes())
            h.update(_settings_text(job.cfg, job.gates).encode())
            self._prints[job.index] = h.hexdigest()
        return self._prints[job.index]

    def done(self) -> dict[int, Outcome]:
        import json

        from qaudit.runs import read

        found = {}
        for job in self.sweep.jobs:
            row_file = self.folder / f"{self.name(job)}.row.json"
            if not row_file.is_file():
                continue
            try:
                doc = json.loads(row_file.read_text(encoding="utf-8"))
                if doc.get("format") != self.FORMAT or doc.get("fingerprint") != self.fingerprint(job):
                    continue
                row = {k: doc["row"].get(k) for k in COLUMNS} | {"model": str(job.model)}
                if row["status"] == "error":
                    continue
                report = read(json.loads((self.folder / doc["report"]).read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # unreadable or half-written: the job runs again
            found[job.index] = Outcome(job, row, report)
        return found

    def save(self, outcome: Outcome) -> None:
        import json
        import os

        from qaudit.report import to_json
        from qaudit.runs import MultiReport, runs_to_json

        name = self.name(outcome.job)

        def write(path: Path, text: str) -> None:
            tmp = path.with_name(path.name + ".part")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)

        report = None
        if outcome.report is not None:
            r = outcome.report
            write(self.folder / f"{name}.json", runs_to_json(r) if isinstance(r, MultiReport) else to_json(r))
            report = f"{name}.json"
        doc = {
            "format": self.FORMAT,
            "model": str(outcome.job.model),
            "setting": outcome.job.setting,
            "fingerprint": self.fingerprint(outcome.job),
            "row": outcome.row,
            "report": report,
        }
        write(self.folder / f"{name}.row.json", json.dumps(doc, indent=1, default=str) + "\n")


def run_shipped_job(shipped) -> Outcome:
    """A job whose model and data came through Ray's object store (:func:`qaudit.distributed.shipped_jobs`)."""
    from qaudit.distributed import unshipped

    job = shipped[0]
    with unshipped(shipped) as local:
        return _as_user(run_job(local), job, local)


def run_shared_job(item) -> Outcome:
    """A job reading its model and data by path in a shared folder (:func:`qaudit.distributed.shared_jobs`)."""
    job, local, run = item
    run.check()  # this worker sees the driver's folder
    return _as_user(run_job(local), job, local)


def _as_user(outcome: Outcome, job: Job, local: Job) -> Outcome:
    """``outcome`` of ``local`` (``job`` on other paths) naming the user's files."""
    paths = {str(local.cfg.model): str(job.model)} | {
        str(getattr(local.cfg, k)): str(getattr(job.cfg, k)) for k in ("calib", "eval", "labels")
        if isinstance(getattr(job.cfg, k), Path)}  # fmt: skip
    if outcome.report is not None:  # the report names the user's files, not the worker's copies
        outcome.report = _renamed(outcome.report, paths)
    if outcome.row.get("error"):
        for copy, original in paths.items():
            outcome.row["error"] = outcome.row["error"].replace(copy, original)
    outcome.row["model"] = str(job.model)
    return outcome


def _renamed(report, paths: dict[str, str]):
    from qaudit.runs import MultiReport

    if isinstance(report, MultiReport):
        return replace(report, runs=tuple((n, _renamed(r, paths)) for n, r in report.runs))

    def fix(d: dict) -> dict:
        return {k: paths.get(v, v) if isinstance(v, str) else v for k, v in d.items()}

    return replace(report, model=fix(report.model), data=fix(report.data))


# ----------------------------------------------------------- the outputs


def _cell(v, key: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if key in ("top1_agreement", "acc_fp32", "acc_int8"):
            return f"{v:.4f}"
        if key == "qce":
            return f"{v:.3g}"
        return f"{v:.2f}"
    return str(v)


TERMINAL_COLUMNS = ("model", "setting", "status", "worst_layer", "worst_sqnr_db", "sqnr_db", "qce", "acc_drop_pct")


def table_text(outcomes: Sequence[Outcome], base: Path | None = None) -> str:
    """The terminal table: one line per audit, then each error in full."""

    def shown(o, k):
        v = o.row.get(k)
        if k == "model" and base is not None:
            try:
                return str(Path(v).resolve().relative_to(base))
            except ValueError:
                return v
        return _cell(v, k)

    cells = [[shown(o, k) for k in TERMINAL_COLUMNS] for o in outcomes]
    widths = [max([len(k), *(len(c[i]) for c in cells)]) for i, k in enumerate(TERMINAL_COLUMNS)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(TERMINAL_COLUMNS, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    errors = [o for o in outcomes if o.row["status"] == "error"]
    for o in errors:
        lines.append(f"error: {shown(o, 'model')} {o.row['setting']}".rstrip() + f": {o.row['error']}")
    counts = {s: sum(o.row["status"] == s for o in outcomes) for s in ("ok", "pass", "fail", "error")}
    lines.append(f"{len(outcomes)} audits: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines) + "\n"


def csv_text(outcomes: Sequence[Outcome]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for o in outcomes:
        w.writerow({k: ("" if o.row.get(k) is None else repr(v) if isinstance(v := o.row[k], float) else v)
                    for k in COLUMNS})  # fmt: skip
    return buf.getvalue()


def json_text(sweep: Sweep, outcomes: Sequence[Outcome]) -> str:
    """``{"format": {"name": "qaudit-sweep", "version": 1}, "sweep", "grid", "rows": [...], "reports": [...]}``:
    each row's full report (a qaudit JSON report, ``null`` after an error)."""
    import json

    from qaudit.report import to_dict
    from qaudit.runs import MultiReport, runs_to_dict

    def report_dict(r):
        if r is None:
            return None
        return runs_to_dict(r) if isinstance(r, MultiReport) else to_dict(r)

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    doc = {
        "format": {"name": "qaudit-sweep", "version": 1},
        "sweep": str(sweep.path),
        "grid": list(sweep.grid_keys),
        "rows": [{k: clean(o.row.get(k)) for k in COLUMNS} for o in outcomes],
        "reports": [report_dict(o.report) for o in outcomes],
    }
    return json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n"


def comparison(outcomes: Sequence[Outcome]):
    """The N-way aligned comparison of the finished audits (``qaudit compare``'s overlay), or ``None``."""
    from qaudit.comparison.run import compare_reports
    from qaudit.runs import MultiReport

    done = [o for o in outcomes if o.report is not None]
    if len(done) < 2:
        return None
    reports = [o.report.runs[0][1] if isinstance(o.report, MultiReport) else o.report for o in done]
    labels = [f"{o.job.model.stem} {o.job.setting}".strip() for o in done]
    return compare_reports(reports, labels=labels)


__all__ = ["COLUMNS", "Job", "JobFiles", "Outcome", "Sweep", "load", "run", "run_job", "run_jobs"]
