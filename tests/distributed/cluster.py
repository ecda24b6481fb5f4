"""A real two-node Ray cluster on this machine, every byte on loopback (issue 21).

The head listens on 127.0.0.2 and the worker node on 127.0.0.3: Ray replaces
127.0.0.1 by the machine's interface address, so each node gets its own
loopback address. The head probes cloud metadata endpoints (169.254.169.254)
at start even with usage stats disabled: HTTP(S)_PROXY point at a dead loopback
port, NO_PROXY names the nodes. Session files go to a temporary directory
(short: Ray's Unix sockets live there); every port is picked free. The workers
import this checkout's qaudit (PYTHONPATH, and qaudit.distributed.connect's
py_modules).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD, WORKER = "127.0.0.2", "127.0.0.3"
ROOT = Path(__file__).resolve().parents[2]
DEAD_PROXY = "http://127.0.0.1:9"


def free_ports(host: str, n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ps(columns: str) -> str:
    """``ps -eo COLUMNS`` of every process, command lines whole (``COLUMNS`` in the environment,
    as tests/conftest.py sets it, would cut them)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(["ps", "-ww", "-eo", columns], capture_output=True, text=True, env=env).stdout


def started(pid: int) -> int | None:
    """Process ``pid``'s start time (clock ticks after boot, /proc/PID/stat field 22), None when it does not
    run: with the pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (ended, not yet reaped: a container's init may never
    reap it) does not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def loopback_env(base: dict | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[k] = DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = f"{HEAD},{WORKER},127.0.0.1,localhost"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _node_ports(host: str) -> list[str]:
    p = free_ports(host, 9)
    args = [
        f"--node-manager-port={p[0]}",
        f"--object-manager-port={p[1]}",
        f"--metrics-export-port={p[2]}",
        f"--runtime-env-agent-port={p[3]}",
        f"--dashboard-agent-grpc-port={p[4]}",
        f"--dashboard-agent-listen-port={p[5]}",
        f"--min-worker-port={20000 + p[6] % 20000}",
        f"--max-worker-port={20000 + p[6] % 20000 + 40}",
    ]
    return args


class Cluster:
    """``ray start --head`` on 127.0.0.2 and one worker node on 127.0.0.3, ``cpus`` CPUs each."""

    def __init__(self, cpus: int = 1, worker_cpus: int = 1, object_store_mb: int = 300):
        self.tmp = Path(tempfile.mkdtemp(prefix="qr", dir="/tmp"))
        self._known: dict[int, int | None] = {}  # every process own_pids() saw: pid -> start time
        self.env = loopback_env()
        self.env["RAY_TMPDIR"] = str(self.tmp)
        self.port = free_ports(HEAD, 1)[0]
        self.address = f"{HEAD}:{self.port}"
        store = str(object_store_mb * 1024 * 1024)
        common = ["--disable-usage-stats", f"--object-store-memory={store}", f"--temp-dir={self.tmp}"]
        self._ray(
            "start", "--head", f"--node-ip-address={HEAD}", f"--port={self.port}", f"--num-cpus={cpus}",
            "--include-dashboard=false", *common, *_node_ports(HEAD),
        )  # fmt: skip
        if worker_cpus:
            self._ray(
                "start", f"--address={self.address}", f"--node-ip-address={WORKER}", f"--num-cpus={worker_cpus}",
                *common, *_node_ports(WORKER),
            )  # fmt: skip
        self.wait_for_nodes(2 if worker_cpus else 1)

    def _ray(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        ray = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
        out = subprocess.run([*ray, *args], env=self.env, capture_output=True, text=True, timeout=180)
        if check and out.returncode:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {out.stderr[-2000:]}")
        return out

    def wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                [sys.executable, "-c", code, self.address], env=self.env, capture_output=True, text=True, timeout=120
            )
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster has not {n} nodes: {out.stdout[-500:]} {out.stderr[-1500:]}")
            time.sleep(1)

    def worker_pids(self) -> list[int]:
        """The pids of the Python worker processes Ray started for tasks (``ray::`` processes)."""
        out = _ps("pid=,args=")
        pids = []
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if args.startswith("ray::") and str(self.tmp) not in args and "IDLE" not in args:
                pids.append(int(pid))
        return pids

    def own_pids(self) -> list[int]:
        """This cluster's processes: those whose command line names its session folder (GCS, raylets,
        monitors) and their descendants (the workers and agents each raylet started)."""
        out = _ps("pid=,ppid=,args=")
        children: dict[int, list[int]] = {}
        todo = []
        for line in out.splitlines():
            pid, ppid, *args = line.split(None, 2)
            children.setdefault(int(ppid), []).append(int(pid))
            if args and str(self.tmp) in args[0]:
                todo.append(int(pid))
        seen: list[int] = []
        while todo:
            pid = todo.pop()
            if pid not in seen and pid != os.getpid():
                seen.append(pid)
                todo += children.get(pid, [])
        for pid in seen:  # remembered for stop(): a process whose parent died is no one's descendant any more
            self._known.setdefault(pid, started(pid))
        return seen

    def stop(self) -> None:
        """Ends this cluster's processes, by process id, and removes its session folder. Not ``ray stop``:
        that ends every Ray process on the machine, another cluster's too."""
        for _ in range(5):  # again: a dying daemon may have started another (a log monitor)
            pids = self.own_pids()  # a worker whose raylet is gone no longer shows the folder: all at once
            # and every process seen before that still runs (same pid, same start time: not a reused pid)
            pids += [p for p, t in self._known.items() if p not in pids and t and started(p) == t]
            if not pids:
                break
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:  # ended meanwhile
                        pass
                # after SIGKILL too: a killed process runs until the kernel has torn it down (a raylet's
                # memory, under load), and the caller may look at once
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(map(alive, pids)):
                    time.sleep(0.2)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Killer:
    """Kills the first worker process that announces itself in ``folder`` (a file named by its pid):
    ``with Killer(folder) as k: ...``, then ``k.killed`` holds the pid."""

    def __init__(self, folder: Path, timeout: float = 60):
        import threading

        self.folder, self.timeout, self.killed = folder, timeout, []
        folder.mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not self.killed:
            for p in self.folder.iterdir():
                try:
                    os.kill(int(p.name), signal.SIGKILL)
                    self.killed.append(int(p.name))
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join()


def announcing(fn, folder: Path, wait: float = 1.5):
    """``fn`` that first writes its process id into ``folder`` and waits ``wait`` seconds (for a
    :class:`Killer`); pickled by value, so a Ray worker runs it."""
    folder = str(folder)

    def run(*args):
        Path(folder, str(os.getpid())).touch()
        time.sleep(wait)
        return fn(*args)

    return run


class Handed:
    """What the driver hands Ray from the moment it is made: the pickled size of every ``ray.put`` value
    and of every task argument that is not an object reference (Ray puts an argument over 100 KiB into
    its object store itself; a smaller one travels in the task's message). ``sizes``: in order.

    (Ray's own count, ``cumulative_created_bytes`` of the object stores, needs the grpc module, which
    a minimal ``pip install ray`` does not bring.)"""

    def __init__(self, monkeypatch):
        import ray

        self.sizes: list[int] = []
        real_put, real_remote = ray.put, ray.remote

        def size(value) -> int:
            return len(ray.cloudpickle.dumps(value))

        def put(value, **kw):
            self.sizes.append(size(value))
            return real_put(value, **kw)

        class Counted:
            def __init__(self, fn):
                self.fn = fn

            def remote(inner, *args):
                self.sizes += [size(a) for a in args if not isinstance(a, ray.ObjectRef)]
                return inner.fn.remote(*args)

        def remote(*a, **kw):
            decorate = real_remote(*a, **kw)
            return lambda fn: Counted(decorate(fn))

        monkeypatch.setattr(ray, "put", put)
        monkeypatch.setattr(ray, "remote", remote)
