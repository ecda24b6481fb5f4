"""Write files for the user: checked before any work, then all of them or none, never an input.

:func:`check_outputs` runs before the audit reads anything. It resolves every
output path (symlinks, ``..``) and refuses, with one line, an output that is
one of the command's inputs (the model and its external-data files, the
calibration/evaluation data or any file inside their directories, the labels,
the config file, a baseline or a compared report), a directory, a socket or a
block device, a path whose directory does not exist or cannot be written, a
name too long for its file system, and two outputs that write the same file.

At the end, :meth:`Outputs.commit` writes every regular file to a temporary
file beside it, and only when all of them are complete renames them over their
targets: a full disk or a file-size limit removes the temporary files and
leaves every target as it was. Character devices and FIFOs (``/dev/stdout``,
``/dev/null``, a pipe) are opened in place and written into, never replaced;
``-`` is stdout. They are written after the files are in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qaudit.errors import ConfigError, OutputError

STDOUT = "-"
#: prefix of the temporary files qaudit creates beside an output (hidden, short: a long name still fits)
TEMP_PREFIX = ".qaudit-"


def _show(path) -> str:
    from qaudit.renderers.text import printable

    return printable(os.fspath(path))


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


@dataclass
class Target:
    """One output: ``flag`` (e.g. ``--json``), the ``path`` as given, its ``kind``
    (``stdout``, ``stream`` for a character device or FIFO, or ``file``) and the resolved ``real`` path."""

    flag: str
    path: str
    kind: str
    real: str = ""
    temp: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.flag} {_show(self.path)}"


def _name_too_long(real: str) -> bool:
    parent, name = os.path.split(real)
    try:
        limit = os.pathconf(parent or ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no pathconf (Windows)
        return False
    return limit > 0 and len(os.fsencode(name)) > limit


def _through_proc(text: str) -> bool:
    """Whether ``text`` names an open file descriptor (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``)."""
    p = os.path.abspath(text)
    for _ in range(40):
        if os.path.realpath(os.path.dirname(p)).startswith("/proc/") or p.startswith("/proc/"):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return False


def _is_std_stream(st: os.stat_result) -> bool:
    """Whether ``st`` is the file our stdout or stderr writes to (``/dev/stdout`` when it is
    redirected to a file, on systems where ``/dev/stdout`` is not a link into ``/proc``)."""
    for fd in (1, 2):
        try:
            other = os.fstat(fd)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def classify(flag: str, path) -> Target:
    """What writing ``path`` for ``flag`` means, or a :class:`ConfigError` when it cannot be written."""
    text = os.fspath(path)
    if text == STDOUT:
        return Target(flag, text, "stdout")
    if not text:
        raise ConfigError(f"{flag} needs a file path")
    real = os.path.realpath(text)
    shown = f"{flag} {_show(text)}"
    try:
        st = os.stat(text)  # not ``real``: /dev/stdout on a pipe resolves to no path at all
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ConfigError(f"cannot write {shown}: {_reason(e)}") from None
    if st is not None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"cannot write {shown}: it is a directory; give a file path")
        if stat.S_ISSOCK(mode):
            raise ConfigError(f"cannot write {shown}: it is a socket; give a file path")
        if stat.S_ISBLK(mode):
            raise ConfigError(f"cannot write {shown}: it is a block device; give a file path")
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or _through_proc(text) or _is_std_stream(st):
            # a device, a pipe, or a file descriptor (/dev/stdout redirected to a file): written into where it is
            if not os.access(text, os.W_OK):
                raise ConfigError(f"cannot write {shown}: permission denied")
            return Target(flag, text, "stream", text)
    parent = os.path.dirname(real) or "."
    if not os.path.isdir(parent):
        shown_parent = _show(os.path.dirname(text) or ".")
        raise ConfigError(f"cannot write {shown}: directory {shown_parent} does not exist")
    if _name_too_long(real):
        raise ConfigError(f"cannot write {shown}: the file name is too long for its file system")
    return Target(flag, text, "file", real)


def _probe(t: Target) -> None:
    """The one sure test that ``t``'s directory takes a new file (permissions, read-only mounts,
    ACLs, root): create one there and remove it."""
    parent = os.path.dirname(t.real) or "."
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write {t.label}: {_reason(e)} (directory {_show(parent)})") from None


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(real: str, directory: str) -> bool:
    d = os.path.realpath(directory)
    return os.path.commonpath([real, d]) == d


def external_data_files(model) -> list[str]:
    """The external-data files ``model`` (an .onnx path) refers to, resolved; [] when it cannot be read."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        proto = onnx.load(os.fspath(model), load_external_data=False)
    except Exception:  # not a readable model: the audit reports it; there is nothing more to protect
        return []
    base = os.path.dirname(os.path.realpath(model))
    out = []
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                out.append(os.path.realpath(os.path.join(base, loc)))
    return sorted(set(out))


def check_outputs(outputs: dict, inputs: dict, models=()) -> Outputs:
    """Check every output before any work (see the module docstring).

    ``outputs``: flag -> path (``-``: stdout; None: not requested); ``inputs``: label -> path
    of every file or directory the command reads (None: not given); ``models``: the .onnx
    inputs, whose external-data files are protected too. Raises :class:`ConfigError`.
    """
    wanted = {flag: p for flag, p in outputs.items() if p is not None}
    to_stdout = [flag for flag, p in wanted.items() if os.fspath(p) == STDOUT]
    if len(to_stdout) > 1:
        raise ConfigError(f"{' and '.join(to_stdout)} both write to stdout ('-'); give one of them a file path")
    given = [(label, os.fspath(p)) for label, p in inputs.items() if p is not None and os.fspath(p)]
    external = None
    targets: dict[str, Target] = {}
    seen: dict[str, str] = {}
    for flag, p in wanted.items():
        t = classify(flag, p)
        if t.kind == "file":
            for label, src in given:
                if os.path.isdir(src):
                    if _inside(t.real, src):
                        raise ConfigError(
                            f"{t.label} is inside the {label} {_show(src)}: qaudit never writes into its inputs; "
                            "choose another path"
                        )
                elif os.path.exists(t.real) and os.path.exists(src) and _same(t.real, src):
                    raise ConfigError(
                        f"{t.label} is the {label}: qaudit never overwrites its inputs; choose another path"
                    )
            if os.path.exists(t.real):
                if external is None:
                    external = {
                        f: m for m in models if m is not None and os.path.isfile(m) for f in external_data_files(m)
                    }
                for f, m in external.items():
                    if os.path.exists(f) and _same(t.real, f):
                        raise ConfigError(
                            f"{t.label} is an external-data file of the model {_show(m)}: "
                            "qaudit never overwrites its inputs; choose another path"
                        )
            if t.real in seen:
                raise ConfigError(f"{seen[t.real]} and {flag} both write {_show(p)}; give them different paths")
            seen[t.real] = flag
        targets[flag] = t
    for t in targets.values():  # only once no output touches an input
        if t.kind == "file":
            _probe(t)
    return Outputs(targets)


class Outputs:
    """The checked outputs of one command; :meth:`commit` writes them all or none."""

    def __init__(self, targets: dict[str, Target]):
        self.targets = targets
        self._scratch: str | None = None

    def __contains__(self, flag: str) -> bool:
        return flag in self.targets

    def stage(self, flag: str) -> Path:
        """A fresh temporary path for an output another stage writes (the quantized model);
        :meth:`commit` moves it into place with the rest."""
        t = self.targets[flag]
        if t.kind == "file":
            where = os.path.dirname(t.real) or "."
        else:  # a stream or stdout: stage it privately, copy it in at the end
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix="qaudit-out-")
            where = self._scratch
        fd, t.temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=where)
        os.close(fd)
        return Path(t.temp)

    def label_of(self, path) -> str:
        """The flag and user path of a staged temporary ``path`` (for error messages)."""
        for t in self.targets.values():
            if t.temp is not None and os.fspath(path) == t.temp:
                return t.label
        return _show(path)

    def discard(self) -> None:
        """Remove every temporary file; the targets stay as they were."""
        for t in self.targets.values():
            if t.temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(t.temp)
                t.temp = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def commit(self, texts: dict[str, str]) -> None:
        """Write ``texts`` (key of :attr:`targets` -> text) and every staged output: all regular files complete
        beside their targets first, then renamed over them; then the streams and stdout.
        A write error removes the temporary files and raises :class:`OutputError`."""
        try:
            for key, text in texts.items():
                t = self.targets[key]
                if t.kind == "file":
                    fd, t.temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=os.path.dirname(t.real))
                    with open(fd, "w", encoding="utf-8", newline="") as f:
                        f.write(text)
            files = [t for t in self.targets.values() if t.kind == "file" and t.temp is not None]
            for t in files:
                _public_mode(t.temp)
            for t in files:
                os.replace(t.temp, t.real)
                t.temp = None
        except OSError as e:
            self.discard()
            raise OutputError(f"cannot write {self._culprit(e)}: {_reason(e)}; nothing was written") from e
        try:
            for key, t in self.targets.items():
                if t.kind == "file":
                    continue
                if t.temp is not None:
                    _copy_into(t, t.temp)
                elif key in texts:
                    _write_stream(t, texts[key])
        except OSError as e:
            raise OutputError(f"cannot write {self._culprit(e)}: {_reason(e)}") from e
        finally:
            self.discard()

    def _culprit(self, e: OSError) -> str:
        name = getattr(e, "filename", None)
        for t in self.targets.values():
            if name is not None and name in (t.temp, t.real):
                return t.label
        pending = [t for t in self.targets.values() if t.temp is not None]
        return pending[-1].label if pending else "the outputs"


def _public_mode(path: str) -> None:
    """Give a finished temporary file the mode a new file would have (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_stream(t: Target, text: str) -> None:
    if t.kind == "stdout":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(t.real, "a", encoding="utf-8", newline="") as f:  # "a": never truncates, never creates
        f.write(text)


def _copy_into(t: Target, temp: str) -> None:
    if t.kind == "stdout":
        sys.stdout.flush()
        with open(temp, "rb") as src:
            shutil.copyfileobj(src, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    with open(temp, "rb") as src, open(t.real, "ab") as dst:
        shutil.copyfileobj(src, dst)


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside ``target``; it replaces ``target`` only if the block succeeds.
    A character device or FIFO is written into in place (the temporary file is copied into it)."""
    t = classify("output", target)
    if t.kind == "file":
        _probe(t)
    with Outputs({"target": t}) as out:
        tmp = out.stage("target")
        yield tmp
        out.commit({})


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically; ``-`` writes to stdout."""
    with Outputs({"target": classify("output", target)}) as out:
        out.commit({"target": text})
