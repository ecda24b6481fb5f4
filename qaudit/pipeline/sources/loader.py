"""Loader scripts: ``--calib loader.py:NAME`` (Polygraphy's ``--data-loader-script`` convention).

``NAME`` is called with no arguments once per pass over the data and returns:

* an ONNX Runtime ``CalibrationDataReader`` (``get_next()`` until ``None``): a fresh
  reader per pass, so an existing reader works unchanged, with or without ``rewind()``;
* an iterable or iterator of feed dicts ``{input name: array}`` (a generator function works);
* a callable returning such an iterator;
* arrays: one array (single-input models), ``{input name: array}``, or a list of feed dicts.

An error raised by the script (importing it, calling ``NAME``, or while it yields)
is one :class:`~qaudit.errors.DataError` naming the script's line; ``--debug``
shows the traceback (it is the error's ``__cause__``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from qaudit.errors import DataError


def split(spec) -> tuple[Path, str] | None:
    """``(script, NAME)`` when ``spec`` reads ``PATH.py:NAME``; a path that exists wins (a
    Windows drive ``C:`` or a file named ``a:b`` is a path), so only a missing path is split."""
    if not isinstance(spec, (str, os.PathLike)) or Path(spec).exists():
        return None
    script, sep, name = os.fspath(spec).rpartition(":")
    if not sep or not script.lower().endswith(".py") or not all(p.isidentifier() for p in name.split(".")):
        return None
    return Path(script), name


def _line(e: BaseException, script: Path) -> str:
    """``loader.py, line 12``: the last frame of the traceback inside the script."""
    real = script.resolve()
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == real]
    if isinstance(e, SyntaxError) and e.lineno and Path(e.filename or "").resolve() == real:
        return f"{script}, line {e.lineno}"
    return f"{script}, line {frames[-1].lineno}" if frames else str(script)


@contextmanager
def _running(script: Path):
    """While the user's script runs (its import, ``NAME()`` and each feed it yields): its folder is
    first on ``sys.path``, so what it imports from beside it is found at any of those times, as under
    ``python script.py``; and no ``__pycache__`` is written there, or beside what it imports from its
    folder: qaudit writes nothing into a folder the user gave it. Both are restored after (Python's
    own setting: ``-B``, PYTHONDONTWRITEBYTECODE)."""
    folder, before = str(script.resolve().parent), sys.dont_write_bytecode
    sys.path.insert(0, folder)
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before
        sys.path.remove(folder)


class LoaderSource:
    """The feeds of a loader script; ``NAME`` is called afresh for every pass."""

    kind = "loader"
    path = None
    labels = None

    def __init__(self, script: Path, name: str, what: str):
        self.script, self.name, self.what = script, name, what
        self.description = f"{script}:{name}"
        if not script.is_file():
            raise DataError(f"{what} data: loader script not found: {script} (from {self.description})")
        self.func = self._load()
        self.returned: str | None = None

    def _fail(self, e: BaseException, doing: str) -> DataError:
        err = DataError(
            f"{self.what} data: loader {self.description} failed {doing} ({_line(e, self.script)}): "
            f"{type(e).__name__}: {e}"
        )
        err.__cause__ = e
        return err

    def _load(self):
        modname = f"qaudit_loader_{abs(hash(str(self.script.resolve())))}"
        spec = importlib.util.spec_from_file_location(modname, self.script)
        module = importlib.util.module_from_spec(spec)
        try:
            with _running(self.script):
                spec.loader.exec_module(module)
        except Exception as e:
            raise self._fail(e, "while importing it") from e
        obj = module
        for part in self.name.split("."):
            if not hasattr(obj, part):
                names = [
                    n
                    for n, v in vars(module).items()
                    if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == modname
                ]
                raise DataError(
                    f"{self.what} data: loader script {self.script} has no '{self.name}'; its functions: "
                    f"{', '.join(names) or 'none'}"
                )
            obj = getattr(obj, part)
        if not callable(obj):
            raise DataError(
                f"{self.what} data: {self.description} is a {type(obj).__name__}, not a function: write "
                f"def {self.name}(): returning a CalibrationDataReader, an iterator of feed dicts or arrays"
            )
        return obj

    def info(self) -> dict:
        return {"kind": self.kind, "loader": {"script": str(self.script), "name": self.name, "returns": self.returned}}

    def _feeds(self) -> Iterator:
        try:
            with _running(self.script):
                got = self.func()
        except Exception as e:
            raise self._fail(e, f"when {self.name}() was called") from e
        if got is None:
            raise DataError(
                f"{self.what} data: loader {self.description} returned None: return a CalibrationDataReader, an "
                "iterator of feed dicts {input name: array}, or arrays"
            )
        if hasattr(got, "get_next"):
            self.returned = f"CalibrationDataReader {type(got).__qualname__}"
            step = got.get_next
        elif isinstance(got, (np.ndarray, Mapping)):
            self.returned = "arrays"
            step = iter([got]).__next__
        else:
            if callable(got) and not hasattr(got, "__iter__"):
                try:
                    with _running(self.script):
                        got = got()
                except Exception as e:
                    raise self._fail(e, f"when the callable {self.name}() returned was called") from e
            try:
                with _running(self.script):
                    it = iter(got)
            except TypeError:
                raise DataError(
                    f"{self.what} data: loader {self.description} returned {type(got).__name__}: return a "
                    "CalibrationDataReader, an iterator of feed dicts {input name: array}, or arrays"
                ) from None
            self.returned = "a list of feeds" if isinstance(got, (list, tuple)) else "an iterator of feeds"
            step = it.__next__
        while True:
            try:
                with _running(self.script):
                    feeds = step()
            except StopIteration:
                return
            except Exception as e:
                raise self._fail(e, "while reading its feeds") from e
            if feeds is None and self.returned.startswith("CalibrationDataReader"):
                return
            yield feeds

    def read(self, dataset):
        from qaudit.pipeline.data import check_feeds

        return check_feeds(self._feeds(), dataset, f"{self.what} data (loader {self.description})")
