"""Ray: one audit's evaluation capture sharded over a cluster, and a sweep's audits as tasks.

Imported only when ``--ray-address`` (``ray_address``) is given: qaudit without
Ray works as before. What runs where (docs/distributed.md):

* the driver (the process running ``qaudit``) loads, prepares, calibrates and
  quantizes exactly as a local audit does: calibration is one pass, in order
  (ORT's histogram collector widens its range batch by batch), so the ranges and
  the quantized model are the local run's, byte for byte;
* the evaluation batches are cut into consecutive shards; each shard is one Ray
  task (:func:`_capture_shard`) that runs :func:`qaudit.pipeline.capture.capture`
  on its batches and returns its meters. The driver merges them in shard order
  (:meth:`ActivationMeter.merge`, :meth:`OutputMeter.merge`): counts, histograms,
  extremes and encodings exactly the local run's (a histogram does not depend on
  how its values are batched, :class:`~qaudit.pipeline.metrics.RangeHistogram`),
  sums of squares and of cross-entropies up to float64 rounding of their order:
  SQNR, QMSE and QCE within :data:`SUM_RTOL` of the local run's (tested);
* models and data reach the workers through Ray's object store (nothing assumes
  a shared filesystem), or, with ``--ray-shared-dir DIR`` (``ray_shared_dir``), through
  a folder every node mounts at the same path: the driver writes them into a run
  folder of its own there (:class:`SharedRun`), the tasks read them by path and
  only small things (the pairing, labels, the meters) go through the object store;
  qaudit itself reaches the workers through the job's ``runtime_env``
  (``py_modules``: the driver's qaudit, its C kernels included), and every worker
  must run the driver's per-value kernels (``QAUDIT_KERNELS``): a mismatch is an
  error, since C and numpy sums differ in the last bits;
* a worker that dies is retried by Ray (``max_retries``): a shard's result is
  whole or absent, so nothing is lost or counted twice.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from qaudit.errors import ConfigError, QauditError

#: the relative bound on SQNR, QMSE, QCE (any float64 sum) between a sharded and a local run:
#: each sum is a float64 sum of per-batch float64 sums, regrouped into at most a few thousand
#: shard sums: its relative change is below shards * 2**-53 ~ 1e-13; 1e-9 leaves room
SUM_RTOL = 1e-9
#: Ray's retries of a task whose worker died (its default is 3; explicit, as it is the promise)
MAX_RETRIES = 3
#: shards per CPU of the cluster: more shards balance the load and lose less to a dead worker,
#: each costs its sessions' creation
SHARDS_PER_CPU = 2
PIP_HINT = 'pip install "qaudit[ray]"'


def require_ray():
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray-address needs Ray, which is not installed: {PIP_HINT}") from None
    return ray


def connect(address: str):
    """Connect to the Ray cluster at ``address`` (``auto``: ``RAY_ADDRESS``, or the local ``ray start``).

    The workers import the driver's qaudit (``runtime_env`` ``py_modules``) and run its per-value
    kernels (``QAUDIT_KERNELS`` set to the driver's choice: a worker without the C kernels then
    fails instead of summing differently)."""
    ray = require_ray()
    import qaudit
    from qaudit.cli.settings import ENV_KERNELS
    from qaudit.pipeline import kernels

    if ray.is_initialized():
        return ray
    env = {
        "py_modules": [str(Path(qaudit.__file__).parent)],
        "env_vars": {ENV_KERNELS: kernels.name(), "RAY_USAGE_STATS_ENABLED": "0"},
    }
    try:
        ray.init(address=address, runtime_env=env, logging_level="ERROR", log_to_driver=False)
    except ConnectionError as e:
        raise ConfigError(f"--ray-address {address}: cannot connect to a Ray cluster there: {e}") from None
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"--ray-address {address}: {str(e).splitlines()[0]}") from None
    return ray


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# ----------------------------------------------------------- a folder every node sees (--ray-shared-dir)

SHARED_HINT = "give a folder every Ray node mounts at the same path, or drop --ray-shared-dir (the object store then carries them)"
#: the file a run folder holds to prove a worker sees the driver's folder (not one of its own with that name)
SHARED_MARK = ".qaudit-run"


def check_shared_dir(path) -> Path:
    """``path`` as a folder the driver can write, or a :class:`ConfigError` saying what is wrong."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--ray-shared-dir {p}: no such folder; {SHARED_HINT}")
    if not p.is_dir():
        raise ConfigError(f"--ray-shared-dir {p}: not a folder; {SHARED_HINT}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".qaudit-probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--ray-shared-dir {p}: cannot write there ({e.strerror or e}); {SHARED_HINT}") from None
    return p


class SharedRun:
    """One run's folder in ``--ray-shared-dir`` (``qaudit-run-XXXX``), with a token only this run knows:
    ``with SharedRun(root) as run:`` the driver writes into ``run.path``; a task calls :meth:`check` first.
    Removed on exit, whatever happened: the user's folder keeps nothing of the run."""

    def __init__(self, root):
        self.root = check_shared_dir(root)
        self.path = Path(tempfile.mkdtemp(prefix="qaudit-run-", dir=self.root))
        self.token = secrets.token_hex(8)
        (self.path / SHARED_MARK).write_text(self.token)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)

    def __getstate__(self):  # what a task gets: the folder and the token
        return {"root": self.root, "path": self.path, "token": self.token}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def check(self) -> None:
        """On a worker: a :class:`ConfigError` naming this node and the folder when it does not see the
        driver's run folder (missing, unreadable, or another folder of that name)."""
        try:
            seen = (self.path / SHARED_MARK).read_text() == self.token
            why = "it holds another run's files"
        except OSError as e:
            seen, why = False, e.strerror or str(e)
        if not seen:
            raise ConfigError(
                f"Ray node {_node_name()} cannot see the --ray-shared-dir folder {self.path} ({why}); mount "
                f"{self.root} at the same path on every node, or drop --ray-shared-dir"
            )


def _node_name() -> str:
    """This Ray node's address (on a worker), else this machine's host name."""
    try:
        import ray
    except ImportError:
        ray = None
    if ray is not None and ray.is_initialized():
        return ray.util.get_node_ip_address()
    import socket

    return socket.gethostname()


def write_packed(packed: tuple[bytes, dict[str, bytes]], folder: Path) -> Path:
    """The model of :func:`pack_model` as ``folder/model.onnx``, its external data files beside it."""
    data, files = packed
    folder.mkdir(parents=True)
    for loc, content in files.items():
        (folder / loc).write_bytes(content)
    (folder / "model.onnx").write_bytes(data)
    return folder / "model.onnx"


def _write_batch(feeds: dict[str, np.ndarray], path: Path) -> Path:
    """One batch of feeds as a .npz (:func:`qaudit.pipeline.data.save_feeds`: any input name)."""
    from qaudit.pipeline.data import save_feeds

    return save_feeds(feeds, path)


def _read_batch(path: Path) -> dict[str, np.ndarray]:
    from qaudit.pipeline.data import load_feeds

    return load_feeds(path)


# ----------------------------------------------------------- models through the object store


def pack_model(model, base_dir: Path | None) -> tuple[bytes, dict[str, bytes]]:
    """``model`` serialized, and the files of its external data (read from ``base_dir``)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    files: dict[str, bytes] = {}
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = ExternalDataInfo(t).location
            if loc not in files:
                files[loc] = (Path(base_dir or ".") / loc).read_bytes()
    return model.SerializeToString(), files


def unpack_model(packed: tuple[bytes, dict[str, bytes]], work: Path):
    """The model of :func:`pack_model`, its external data files written into ``work``."""
    import onnx

    data, files = packed
    for loc, content in files.items():
        (work / loc).write_bytes(content)
    m = onnx.ModelProto()
    m.ParseFromString(data)
    return m


# ----------------------------------------------------------- the sharded capture


def _check_kernels(driver: str) -> str:
    """This worker's per-value kernels, or a :class:`ConfigError` when they are not the driver's."""
    from qaudit.pipeline import kernels

    ran = kernels.name()
    if ran != driver:
        raise ConfigError(
            f"a Ray worker runs qaudit's {ran} kernels and the driver its {driver} kernels: their sums "
            f"differ in the last bits; install qaudit the same way on every node, or set QAUDIT_KERNELS=numpy"
        )
    return ran


def _qaudit_cause(error):
    """The :class:`QauditError` a Ray task raised (re-raised as itself: one line), else ``error``."""
    cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else None
    return cause if isinstance(cause, QauditError) else error


def _capture_shard(fp32, qmodel, matching, batches, first, labels, options, kernels_name):
    """One shard of the evaluation capture, on a worker: its meters, and the kernels it ran."""
    from qaudit.pipeline.capture import capture

    ran = _check_kernels(kernels_name)
    with tempfile.TemporaryDirectory(prefix="qaudit-shard-") as tmp:
        work = Path(tmp)
        captured = capture(
            unpack_model(fp32, work),
            unpack_model(qmodel, work),
            matching,
            batches,
            work,
            labels=labels,
            first=first,
            **options,
        )
    captured.meter.flush()
    return captured, ran


def _capture_shared_shard(run, fp32_path, q_path, matching, batch_paths, first_path, labels, options, kernels_name):
    """:func:`_capture_shard` reading the models and batches by path from a :class:`SharedRun`."""
    import onnx

    from qaudit.pipeline.capture import capture

    run.check()
    ran = _check_kernels(kernels_name)
    with tempfile.TemporaryDirectory(prefix="qaudit-shard-") as tmp:  # this worker's instrumented graphs
        captured = capture(
            onnx.load(str(fp32_path)),  # its external data read from beside it
            onnx.load(str(q_path)),
            matching,
            (_read_batch(p) for p in batch_paths),
            Path(tmp),
            labels=labels,
            first=None if first_path is None else _read_batch(first_path),
            **options,
        )
    captured.meter.flush()
    return captured, ran


def sharded_capture(
    address: str,
    fp32_model,
    qmodel,
    matching,
    batches: Iterable[dict[str, np.ndarray]],
    work: Path,
    *,
    n_batches: int,
    labels: np.ndarray | None = None,
    on_batch: Callable[[int], None] | None = None,
    shared_dir: Path | None = None,
    **options,
):
    """:func:`~qaudit.pipeline.capture.capture` over a Ray cluster: the same :class:`Captured`.

    ``n_batches``: how many batches ``batches`` yields (it sets the shard size). At most two
    shards per CPU are in the object store at once; each shard's samples are reported to
    ``on_batch`` when its task returns. ``shared_dir`` (``--ray-shared-dir``): the models and
    the shards' batches are written into a :class:`SharedRun` there instead, and read by path."""
    if shared_dir is None:
        return _sharded(
            address, fp32_model, qmodel, matching, batches, work, n_batches, labels, on_batch, None, options
        )
    with SharedRun(shared_dir) as run:
        return _sharded(address, fp32_model, qmodel, matching, batches, work, n_batches, labels, on_batch, run, options)


def _sharded(address, fp32_model, qmodel, matching, batches, work, n_batches, labels, on_batch, run, options):
    from qaudit.pipeline import kernels
    from qaudit.pipeline.data import samples

    ray = connect(address)
    cpus = cluster_cpus(ray)
    per_shard = max(1, math.ceil(n_batches / (SHARDS_PER_CPU * cpus)))
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(
        _capture_shard if run is None else _capture_shared_shard
    )
    if run is None:
        fp32_ref = ray.put(pack_model(fp32_model, work))
        q_ref = ray.put(pack_model(qmodel, work))
    else:  # by path: the object store carries no model
        fp32_ref = write_packed(pack_model(fp32_model, work), run.path / "fp32")
        q_ref = write_packed(pack_model(qmodel, work), run.path / "quantized")
    matching_ref = ray.put(matching)
    name = kernels.name()
    pending: dict = {}  # ref -> shard index
    results: dict[int, object] = {}
    sizes: dict[int, int] = {}
    files: dict[int, list[Path]] = {}  # a shard's batch files in the run folder
    first_ref = None
    seen = 0

    def collect(block: bool):
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1, timeout=None if block else 0)
        for ref in done:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                raise _qaudit_cause(e) from None
            for path in files.pop(i, ()):  # a finished shard's batches (the first batch stays)
                path.unlink()
            if on_batch is not None:
                on_batch(sizes[i])

    def submit(shard: list, index: int):
        nonlocal first_ref
        n = sum(samples(f) for f in shard)
        lab = labels[seen : seen + n] if labels is not None else None
        sizes[index] = n
        if run is not None:
            paths = [_write_batch(f, run.path / f"batch-{index}-{j}.npz") for j, f in enumerate(shard)]
            if first_ref is None:  # the evaluation's first batch: every later shard reads it
                first_ref = paths[0]
            files[index] = [p for p in paths if p != first_ref]
            data = (run, fp32_ref, q_ref, matching_ref, tuple(paths))
        else:
            if first_ref is None:
                first_ref = ray.put(shard[0])
            data = (fp32_ref, q_ref, matching_ref, ray.put(shard))
        first = None if index == 0 else first_ref
        ref = task.remote(*data, first, lab, options, name)
        pending[ref] = index
        return n

    try:
        shard: list = []
        index = 0
        for feeds in batches:
            shard.append(feeds)
            if len(shard) == per_shard:
                seen += submit(shard, index)
                shard, index = [], index + 1
                while len(pending) >= SHARDS_PER_CPU * cpus:
                    collect(block=True)
        if shard:
            seen += submit(shard, index)
            index += 1
        while pending:
            collect(block=True)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    ran = sorted({k for _, k in results.values()})
    if ran != [name]:  # each task checks it; a report states it
        raise ConfigError(f"the Ray workers ran the {', '.join(ran)} kernels, the driver its {name} kernels")
    info = {"address": address, "shards": index, "cpus": cpus, "kernels": name}
    info["shared_dir"] = None if run is None else str(run.root)
    return merge_captured([results[i][0] for i in range(index)], info)


def merge_captured(parts: list, ray_info: dict | None = None):
    """One :class:`Captured` from the shards' (in shard order)."""
    from qaudit.pipeline.capture import Captured

    head = parts[0]
    meter, outputs = head.meter, head.outputs
    for p in parts[1:]:
        meter.merge(p.meter)
        outputs.merge(p.outputs)
    return Captured(meter, outputs, sum(p.samples for p in parts), head.plain_outputs, ray=ray_info)


# ----------------------------------------------------------- many tasks (qaudit sweep; the seam of qaudit fix)


def map_tasks(address: str, fn, items, on_done=None) -> list:
    """``[fn(item) for item in items]``, one Ray task per item, retried when its worker dies.

    ``fn`` returns its errors rather than raising them (:func:`qaudit.sweep.run_job`); an
    item that still fails (a task lost ``MAX_RETRIES`` times) raises. ``on_done(i)``: item ``i``
    finished. The results come back in the items' order."""
    ray = connect(address)
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(fn)
    refs = [task.remote(item) for item in items]
    index = {ref: i for i, ref in enumerate(refs)}
    results: dict[int, object] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # fn's errors are returned: this is the task's own
                    raise _qaudit_cause(e) from None
                if on_done is not None:
                    on_done(index[ref])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(refs))]


class RayExecutor:
    """An executor for :func:`qaudit.remedy.sensitivity.verify` (``qaudit fix --ray-address``): one Ray
    task per change set. A workspace's files (prepared graph, ranges, evaluation batches, fp32 outputs,
    labels) go to the object store once and every task writes them into a temporary folder of its
    own worker: nothing assumes the workers see the driver's filesystem. ``width``: the cluster's
    CPUs, how many change sets the search measures at once (:func:`qaudit.remedy.search.search`).

    ``shared_dir`` (``--ray-shared-dir``): the workspaces are written into a :class:`SharedRun` there
    (:meth:`workspace_root`) and every task reads them by path; nothing goes to the object store.
    :meth:`close` removes that run folder."""

    def __init__(self, address: str, shared_dir: Path | None = None):
        self.address = address
        if shared_dir is not None:  # a bad folder is one line before the cluster is asked
            check_shared_dir(shared_dir)
        self.width = cluster_cpus(connect(address))
        self._refs: dict = {}
        self.shared = None if shared_dir is None else SharedRun(shared_dir)

    def workspace_root(self):
        """A temporary folder to write a workspace into (a context): in the shared run, or on this machine."""
        return tempfile.TemporaryDirectory(prefix="qaudit-fix-", dir=None if self.shared is None else self.shared.path)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.__exit__()

    def map(self, fn, workspaces, change_sets):
        from qaudit.pipeline import kernels

        ray = require_ray()
        items = []
        for ws, changes in zip(workspaces, change_sets, strict=True):
            if self.shared is not None:  # by path
                items.append((fn, ws, self.shared, changes, kernels.name()))
                continue
            if ws.work not in self._refs:
                self._refs[ws.work] = ray.put(_files_of(ws.work))
            items.append((fn, ws, self._refs[ws.work], changes, kernels.name()))
        return map_tasks(self.address, _measure_shipped if self.shared is None else _measure_shared, items)


def _moved(ws, root: Path):
    """``ws`` with its paths under ``root`` instead of ``ws.work``."""
    from dataclasses import replace

    def move(p):
        return None if p is None else root / Path(p).relative_to(ws.work)

    return replace(
        ws,
        work=root,
        folded=move(ws.folded),
        ranges={k: move(v) for k, v in ws.ranges.items()},
        batches=tuple(move(p) for p in ws.batches),
        fp32=tuple(move(p) for p in ws.fp32),
        labels=move(ws.labels),
        upgraded=move(ws.upgraded),
        upgraded_ranges=None if ws.upgraded_ranges is None else {k: move(v) for k, v in ws.upgraded_ranges.items()},
    )


def _measure_shipped(item):
    """One change set measured on a worker: the workspace's files written here first."""
    import ray

    fn, ws, ref, changes, kernels_name = item
    _check_kernels(kernels_name)
    with tempfile.TemporaryDirectory(prefix="qaudit-fix-ws-") as tmp:
        root = Path(tmp)
        for rel, data in ray.get(ref).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return fn(_moved(ws, root), changes)


def _measure_shared(item):
    """One change set measured on a worker from a workspace in a :class:`SharedRun`, read by path."""
    fn, ws, run, changes, kernels_name = item
    run.check()
    _check_kernels(kernels_name)
    return fn(ws, changes)


def _files_of(path: Path) -> dict[str, bytes]:
    """A file, or every file under a folder, by path relative to ``path`` (``""``: the file itself)."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _external_locations(model_path: Path) -> list[str]:
    """The locations (relative to its folder) of the external data files a model refers to."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        m = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # not a model: the task's audit reports it, in its row
        return []
    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(m) if uses_external_data(t)})


def _external_files(model_path: Path) -> dict[str, bytes]:
    """The external data files a model refers to, by location (relative to its folder)."""
    return {loc: (model_path.parent / loc).read_bytes() for loc in _external_locations(model_path)}


def shared_jobs(jobs: list, run: SharedRun) -> list:
    """The jobs of a sweep reading their model and data files by path in ``run``'s shared folder
    (``--ray-shared-dir``): a file or folder already in that folder is read where it is, any other
    is copied into the run folder once (a model with its external data files), for every job that
    reads it. Each item: ``(job, the job on the shared paths, run)``."""
    root = run.root.resolve()
    copies: dict[Path, Path] = {}

    def shared(path: Path) -> Path:
        src = Path(path).resolve()
        if src.is_relative_to(root):
            return src
        if src not in copies:
            dest = run.path / str(len(copies)) / src.name
            dest.parent.mkdir()
            if src.is_dir():
                shutil.copytree(src, dest)
            else:
                shutil.copyfile(src, dest)
                for loc in _external_locations(src):  # a missing one is the audit's error, in its row
                    if (src.parent / loc).is_file():
                        (dest.parent / loc).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src.parent / loc, dest.parent / loc)
            copies[src] = dest
        return copies[src]

    out = []
    for job in jobs:
        cfg = job.cfg
        paths = {k: shared(getattr(cfg, k)) for k in ("calib", "eval", "labels") if isinstance(getattr(cfg, k), Path)}
        from dataclasses import replace

        out.append((job, replace(job, model=shared(job.model), cfg=cfg.replace(model=shared(job.model), **paths)), run))
    return out


def shipped_jobs(jobs: list) -> list:
    """The jobs of a sweep with their model and data files in Ray's object store: each
    distinct file or folder is put once and shared by every job that reads it."""
    ray = require_ray()
    if not ray.is_initialized():  # ray.put would start a Ray of its own, on the machine's address
        raise RuntimeError("shipped_jobs needs a connection: qaudit.distributed.connect(address) first")
    refs: dict[Path, object] = {}

    def ref_of(path, read=_files_of):
        key = (Path(path).resolve(), read)
        if key not in refs:
            refs[key] = ray.put(read(Path(path)))
        return refs[key]

    out = []
    for job in jobs:
        cfg = job.cfg
        files = {"model": ref_of(job.model), "model_data": ref_of(job.model, _external_files)}
        for name in ("calib", "eval", "labels"):
            value = getattr(cfg, name)
            if isinstance(value, Path):
                files[name] = ref_of(value)
        out.append((job, files))
    return out


class unshipped:
    """``with unshipped(shipped) as job``: the job's files written into a temporary folder on
    this worker, the job's paths pointing at them; removed on exit."""

    def __init__(self, shipped):
        self.job, self.files = shipped
        self.tmp = None

    def __enter__(self):
        import ray

        self.tmp = tempfile.TemporaryDirectory(prefix="qaudit-job-")
        root = Path(self.tmp.name)
        paths = {}
        for name, ref in self.files.items():
            content = ray.get(ref)
            if name == "model_data":
                continue
            original = self.job.model if name == "model" else getattr(self.job.cfg, name)
            target = root / name / original.name
            for rel, data in content.items():
                p = target / rel if rel else target
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            paths[name] = target
        for loc, data in ray.get(self.files["model_data"]).items():  # beside the model, as it refers to them
            (paths["model"].parent / loc).write_bytes(data)
        changes = {k: v for k, v in paths.items() if k != "model"}
        from dataclasses import replace

        cfg = self.job.cfg.replace(model=paths["model"], **changes)
        return replace(self.job, cfg=cfg)

    def __exit__(self, *exc):
        self.tmp.cleanup()
