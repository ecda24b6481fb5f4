"""Write files for the user atomically, or to stdout (``-``), never leaving half a file."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from qaudit.errors import ConfigError


@contextlib.contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside ``target``; it replaces ``target`` only if the block succeeds."""
    path = Path(target)
    if not path.parent.exists():
        raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically; ``-`` writes to stdout."""
    if str(target) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
