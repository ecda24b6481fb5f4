"""Calibration and evaluation data: discovery, validation, streaming batches.

Accepted layouts (``--calib`` / ``--eval`` take a directory or a single file):

* ``*.npy``: one sample (the input's shape without the batch axis) or a batch
  (with it) per file; single-input models only.
* ``*.npz``: arrays keyed by input name, one sample or a batch per file; any
  number of inputs.
* ONNX test-data folders, the model-zoo layout: ``test_data_set_*/input_*.pb``
  (TensorProto files; matched to inputs by the tensor's name, else by index).

In the Python API the data may also be held by the caller, and is streamed
from it, never copied whole:

* an ONNX Runtime ``CalibrationDataReader`` with a ``rewind()`` method
  (``get_next()`` until ``None``; rewound before every pass);
* a callable returning a fresh iterator of feed dicts (``{input: array}``);
* arrays: one array (single-input models), ``{input name: array}``, or a
  list of feed dicts, each input batched on its batch axis.

The pipeline reads the calibration data more than once (a check, the
activation probe, calibration, the folding check), so a one-shot iterator or
generator is refused with a message saying what to pass instead.

Files are read in sorted name order, so labels line up with samples in that
order; only regular files are read (a FIFO, socket or device with a data
file's name is refused, naming it: reading it could block forever or change
the sample set). Each input has its own batch axis (:func:`batch_layout`:
from the model's dims, or given by the user): the samples of a file are
counted, split and concatenated along it. An input without one (a scalar
sample rate, an input no other shares a batch dim with) is fed as it is;
samples are batched together only while such inputs hold equal values. A file
whose inputs all lack a batch axis is one run, counted as one sample.
Everything is checked against the model's inputs (names, rank, fixed dims,
dtype, finite values) by :meth:`Dataset.scan` before any model runs; batches
are then streamed: ``.npy`` files are memory mapped and only one batch is held
in memory at a time.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qaudit.errors import ConfigError, DataError
from qaudit.pipeline.load import InputSpec, LoadedModel, load_model

_FINITE_CHUNK = 1 << 22  # elements checked for NaN/Inf at a time


@dataclass(frozen=True)
class _Item:
    """One file (or test-data folder) holding one sample or one batch for every input."""

    path: Path
    kind: str  # "npy" | "npz" | "pb"


def _not_regular(p: Path) -> str | None:
    """What ``p`` is when it is not a regular file (symbolic links followed), else None."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if p.is_symlink() else "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def regular_file(p: Path, what: str) -> None:
    """Refuse anything but a regular file: reading a FIFO or a device can block forever."""
    kind = _not_regular(p)
    if kind is not None:
        raise DataError(
            f"{what} {p} is {kind}, not a regular file; qaudit reads only regular files: "
            "remove it from the data directory or point at a regular file"
        )


def discover(path: Path, what: str) -> list[_Item]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} data not found: {path}")
    if not path.is_dir():
        kind = path.suffix.lower().lstrip(".")
        if kind not in ("npy", "npz"):
            raise DataError(f"{what} data file {path} is not .npy or .npz")
        regular_file(path, f"{what} data")
        return [_Item(path, kind)]
    sets = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("test_data_set_"))
    if sets:
        items = [_Item(p, "pb") for p in sets if any(p.glob("input_*.pb"))]
        if not items:
            raise DataError(f"{what} data {path}: the test_data_set_* folders hold no input_*.pb files")
        return items
    items = [
        _Item(p, p.suffix.lower().lstrip(".")) for p in sorted(path.iterdir()) if p.suffix.lower() in (".npy", ".npz")
    ]
    if not items:
        raise DataError(
            f"{what} data directory {path} is empty: put .npy/.npz files or test_data_set_*/input_*.pb folders in it"
        )
    for item in items:  # before anything is read: a FIFO would block the scan forever
        regular_file(item.path, f"{what} data")
    return items


class _FileSource:
    """Files on disk: ``.npy``/``.npz`` files or ONNX test-data folders (see the module docstring)."""

    def __init__(self, path, what: str):
        self.path = Path(path)
        self.description = str(self.path)
        self.items = discover(self.path, what)

    def read(self, dataset: Dataset) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        for item in self.items:
            yield str(item.path), dataset._read(item)


class _MemorySource:
    """Feeds the caller holds: a reader with ``rewind()``, a callable returning a fresh
    iterator, or arrays. ``read`` streams them; nothing is copied whole."""

    path = None

    def __init__(self, kind: str, obj, description: str, what: str):
        self.kind, self.obj, self.description, self.what = kind, obj, description, what

    def _feeds(self) -> Iterator:
        if self.kind == "reader":
            self.obj.rewind()
            while (feeds := self.obj.get_next()) is not None:
                yield feeds
        elif self.kind == "callable":
            it = self.obj()
            try:
                it = iter(it)
            except TypeError:
                raise DataError(
                    f"{self.what} data: {self.description} returned {type(it).__name__}, not an iterator of "
                    "feed dicts ({input name: array})"
                ) from None
            yield from it
        else:  # "arrays": a list of feeds or one feed
            yield from self.obj

    def read(self, dataset: Dataset) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        return check_feeds(self._feeds(), dataset, f"{self.what} data ({self.description})")


def check_feeds(items, dataset: Dataset, label: str) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """``(where, feeds)`` of every feed dict in ``items`` (an array for a single-input model),
    keyed exactly by the model's input names; shapes and dtypes are checked by the Dataset."""
    names = [s.name for s in dataset.inputs]
    for i, feeds in enumerate(items):
        where = f"{label}, item {i}"
        if isinstance(feeds, np.ndarray) and len(names) == 1:
            feeds = {names[0]: feeds}
        if not isinstance(feeds, Mapping):
            raise DataError(
                f"{where} is {type(feeds).__name__}, not a feed dict {{input name: array}} "
                f"(the model's inputs: {', '.join(names)})"
            )
        unknown = sorted(str(k) for k in feeds if k not in names)
        missing = [n for n in names if n not in feeds]
        if unknown or missing:
            raise DataError(
                f"{where} has inputs {', '.join(map(str, feeds)) or 'none'}; the model's inputs are "
                f"{', '.join(names)}: key every feed by the model's input names"
            )
        try:
            yield where, {n: np.asarray(feeds[n]) for n in names}
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}: an input is not an array: {e}") from None


def _describe(obj) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{type(obj).__module__}.{name}" if not isinstance(obj, type) else name


def _arrays_description(feeds) -> str:
    if isinstance(feeds, Mapping):
        parts = [f"{k}: {getattr(v, 'dtype', '?')}{list(getattr(v, 'shape', ()))}" for k, v in feeds.items()]
        return "arrays {" + ", ".join(parts) + "}"
    return f"array {feeds.dtype}{list(feeds.shape)}"


def source(data, what: str, inputs=(), preprocess=None, class_names=None):
    """The source of ``data``: a path, a reader with ``rewind()``, a callable, or arrays.

    A path is a loader script (``loader.py:NAME``), a folder of images (class
    subfolders too) or of WAV files (:mod:`qaudit.pipeline.sources`, read with
    ``preprocess``), else ``.npy``/``.npz`` files or test-data folders. A one-shot
    iterator is refused: the pipeline reads the data more than once.
    """
    if isinstance(data, (str, os.PathLike)):
        from qaudit.pipeline.sources import audio, images, loader

        script = loader.split(data)
        if script is not None:
            return loader.LoaderSource(*script, what)
        p = Path(data)
        if p.suffix.lower() == ".py" and p.is_file():
            raise DataError(f"{what} data {p} is a Python script: name its function, {p}:NAME (docs/data.md)")
        if p.is_dir() or p.is_file():
            found = images.find(p, what, class_names)
            if found is not None:
                return images.ImageSource(p, found, preprocess, inputs, what)
            wavs = audio.find(p)
            if wavs is not None:
                return audio.AudioSource(p, wavs, preprocess, inputs, what)
        return _FileSource(data, what)
    if isinstance(data, np.ndarray):
        return _MemorySource("arrays", [data], _arrays_description(data), what)
    if isinstance(data, Mapping):
        return _MemorySource("arrays", [data], _arrays_description(data), what)
    if hasattr(data, "get_next"):
        if not callable(getattr(data, "rewind", None)):
            raise DataError(
                f"{what} data: the CalibrationDataReader {type(data).__name__} has no rewind() method, and qaudit "
                "reads the data more than once; add a rewind() that restarts it (as ONNX Runtime's examples do), "
                "or pass a function that returns a fresh reader or iterator"
            )
        return _MemorySource("reader", data, f"CalibrationDataReader {_describe(data)}", what)
    if isinstance(data, (list, tuple)):
        return _MemorySource("arrays", data, f"a list of {len(data)} feeds", what)
    if isinstance(data, Iterator):
        raise DataError(
            f"{what} data is a one-shot {type(data).__name__}, and qaudit reads the data more than once; pass a "
            "function that returns a fresh iterator (e.g. lambda: make_batches()), a CalibrationDataReader with "
            "rewind(), a list of feed dicts, or a directory of .npy/.npz files"
        )
    if callable(data):
        return _MemorySource("callable", data, f"callable {_describe(data)}", what)
    raise DataError(
        f"{what} data of type {type(data).__name__} is not supported: pass a path, a CalibrationDataReader with "
        "rewind(), a function returning an iterator of feed dicts, or arrays"
    )


# -- batch axes --------------------------------------------------------------


class Feeds(dict):
    """One model feed ``{input name: array}`` and the number of samples it holds."""

    __slots__ = ("samples",)

    def __init__(self, arrays, samples: int):
        super().__init__(arrays)
        self.samples = samples


def save_feeds(feeds: Mapping[str, np.ndarray], path: Path) -> Path:
    """One batch of feeds as a .npz qaudit reads back with :func:`load_feeds`: the arrays as ``i0``,
    ``i1``, ... and their input names in ``names``, so a name may be any string (``np.savez(path,
    **feeds)`` fails on an input named ``file`` and drops one named ``allow_pickle``)."""
    np.savez(path, names=np.array(list(feeds), dtype=str), **{f"i{k}": v for k, v in enumerate(feeds.values())})
    return path


def load_feeds(path: Path) -> dict[str, np.ndarray]:
    """The feeds :func:`save_feeds` wrote, by input name, in their order."""
    with np.load(path, allow_pickle=False) as f:
        return {str(n): f[f"i{k}"] for k, n in enumerate(f["names"])}


def samples(feeds: Mapping[str, np.ndarray]) -> int:
    """The samples in a batch: what :meth:`Dataset.batches` counted; for a plain dict
    (feeds built by hand in the Python API), axis 0 of its first input."""
    n = getattr(feeds, "samples", None)
    return n if n is not None else next(iter(feeds.values())).shape[0]


@dataclass(frozen=True)
class BatchLayout:
    """Which axis of each input holds the samples (``None``: fed as it is), and why."""

    axes: dict = field(default_factory=dict)  # input name -> axis or None
    #: the batch size the model fixes (a fixed dim on a batch axis; 1 when no input is batched), or None
    fixed: int | None = None
    rule: str = ""  # how the axes were found, for the report

    def as_dict(self) -> dict:
        return {"axes": dict(self.axes), "rule": self.rule, "fixed": self.fixed}


#: dim names read as "the batch" wherever they appear
_BATCH_NAMES = ("n", "b", "bs", "batch", "batch_size", "batchsize", "num_samples")


def _batch_like(symbol: str) -> bool:
    return symbol.lower() in _BATCH_NAMES or "batch" in symbol.lower()


def _symbols(spec: InputSpec) -> tuple:
    return tuple(spec.symbols) if len(spec.symbols) == len(spec.shape) else (None,) * len(spec.shape)


def _shared_symbol(specs: list[InputSpec]) -> tuple[str, dict[str, int]] | None:
    """The batch symbol and its axis in each input holding it: a batch-like name
    ('batch', 'N', ...) in any input, else a dim name shared by two or more inputs that
    only fixed dims precede (a dynamic dim before it could be the batch: [?, 'seq'])."""
    where: dict[str, dict[str, int]] = {}
    preceded: set[str] = set()
    for s in specs:
        for i, sym in enumerate(_symbols(s)):
            if sym is None or s.name in where.get(sym, {}):
                continue
            where.setdefault(sym, {})[s.name] = i
            if any(d is None for d in s.shape[:i]):
                preceded.add(sym)
    named = [k for k in where if _batch_like(k)]
    shared = [k for k in where if len(where[k]) >= 2 and k not in preceded]
    pool = named or shared
    if not pool:
        return None
    best = min(pool, key=lambda k: (-len(where[k]), sum(where[k].values()), k))
    return best, where[best]


def _inferred_axes(specs: list[InputSpec]) -> tuple[dict[str, int | None], str]:
    """Each input's batch axis from the model's dims alone (docs/configuration.md#batch-axes):

    1. scalars have none;
    2. axis 0 when every other input has the same fixed size there ([1, 'seq'] twice);
    3. the axis of the batch symbol (:func:`_shared_symbol`); inputs without it have none,
       except axis 0 of size 1 beside a symbol on axis 0 (a batch fixed at 1);
    4. axis 0 when it is dynamic in every input (or there is one input);
    5. the one axis of each input of size 1, a batch fixed at 1: [1, 512] and [2, 1, 128];
    6. otherwise none: every file is fed as it is, one run.
    """
    axes: dict[str, int | None] = {s.name: None for s in specs if not s.shape}
    arr = [s for s in specs if s.shape]
    if not arr:
        return axes, "scalar inputs only: fed as they are"
    first = {s.shape[0] for s in arr}
    if len(arr) == 1 or (len(first) == 1 and None not in first):
        return {**axes, **{s.name: 0 for s in arr}}, "axis 0"
    found = _shared_symbol(arr)
    if found is not None:
        sym, at = found
        # beside a batch on axis 0, an input of 1 there may be a batch fixed at 1 ([1, 2] image
        # sizes beside images [N, 3, H, W]): batched on axis 0, which fixes the batch at 1
        leading = all(a == 0 for a in at.values())
        other = {s.name: 0 if leading and s.shape[0] == 1 else None for s in arr if s.name not in at}
        return {**axes, **at, **other}, f"the dim '{sym}'"
    if first == {None}:
        return {**axes, **{s.name: 0 for s in arr}}, "axis 0"
    if all(s.shape.count(1) == 1 for s in arr):  # exporters fix a batch at 1; other sizes are not read as one
        return {**axes, **{s.name: s.shape.index(1) for s in arr}}, "the one dim of each input fixed at 1"
    return {**axes, **{s.name: None for s in arr}}, (
        "none found (no dim common to every input): every file is fed as it is, one run per file"
    )


def _given_axis(spec: InputSpec, value) -> int | None:
    if value is None:
        return None
    rank = len(spec.shape)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"batch axis of input '{spec.name}' must be an integer or none, not {value!r}")
    if rank == 0:
        raise ConfigError(f"input '{spec.name}' is a scalar: it has no batch axis (give {spec.name}=none)")
    if not -rank <= value < rank:
        raise ConfigError(
            f"batch axis {value} of input '{spec.name}' is out of range: it has {rank} axes ({spec.describe()})"
        )
    return int(value) % rank


def batch_layout(inputs: list[InputSpec], given: Mapping | None = None) -> BatchLayout:
    """Every input's batch axis: ``given`` (input name -> axis or None, ``--batch-axis``),
    the others inferred from the model's dims (:func:`_inferred_axes`)."""
    given = dict(given or {})
    names = [s.name for s in inputs]
    for k in given:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            raise ConfigError(
                f"a batch axis (--batch-axis, batch_axis) is given for input '{k}', which the model does not have"
                + (f" (did you mean '{close[0]}'?)" if close else "")
                + f"; its inputs: {', '.join(names)}"
            )
    axes = {s.name: _given_axis(s, given[s.name]) for s in inputs if s.name in given}
    inferred, rule = _inferred_axes([s for s in inputs if s.name not in given])
    axes = {n: (axes[n] if n in given else inferred[n]) for n in names}
    if given:
        rule = "given (--batch-axis)" if len(given) == len(names) else f"given (--batch-axis), others: {rule}"
    sizes = {s.name: s.shape[axes[s.name]] for s in inputs if axes[s.name] is not None}
    fixed_sizes = {d for d in sizes.values() if d is not None}
    if len(fixed_sizes) > 1:
        raise ConfigError(
            "the batch axes have different fixed sizes ("
            + ", ".join(f"{n} axis {axes[n]}: {d}" for n, d in sizes.items() if d is not None)
            + "); give each input's batch axis with --batch-axis NAME=AXIS (NAME=none: fed as it is)"
        )
    fixed = next(iter(fixed_sizes)) if fixed_sizes else (None if sizes else 1)
    return BatchLayout(axes, fixed, rule)


def _take(a: np.ndarray, axis: int, start: int, n: int) -> np.ndarray:
    """Samples ``start:start+n`` of ``a`` along ``axis`` (a view)."""
    return a[(slice(None),) * axis + (slice(start, start + n),)]


class Dataset:
    """A validated, streamable set of model feeds."""

    def __init__(
        self,
        data,
        inputs: list[InputSpec],
        what: str = "calibration",
        layout: BatchLayout | None = None,
        preprocess: Mapping | None = None,
        class_names=None,
    ):
        """``data``: a path, or what :func:`source` accepts from the Python API; ``layout``:
        the batch axes (default: inferred from ``inputs``, :func:`batch_layout`);
        ``preprocess``, ``class_names``: for image and WAV folders (docs/data.md)."""
        if preprocess is not None:
            from qaudit.pipeline.sources.preprocess import check_table

            preprocess = check_table(preprocess, "(preprocess)")  # a compact string, or a table
        self.source = source(data, what, inputs, preprocess, class_names)
        self.path = self.source.path  # None for data held in memory
        self.description = self.source.description  # what the report records as the data
        self.inputs = inputs
        self.layout = layout or batch_layout(inputs)
        self.what = what
        self.n_samples = 0
        self._scanned = False

    def _items(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """``(where, feeds)`` for every file or in-memory item, batched and checked."""
        for where, arrays in self.source.read(self):
            yield where, self._batched(where, arrays)

    # -- reading ---------------------------------------------------------
    def _read(self, item: _Item) -> dict[str, np.ndarray]:
        names = [s.name for s in self.inputs]
        if item.kind != "pb":
            regular_file(item.path, f"{self.what} data")
        try:
            if item.kind == "npy":
                if len(names) != 1:
                    raise DataError(
                        f"{item.path}: .npy files feed single-input models only; this model has inputs "
                        f"{', '.join(names)}: save .npz files keyed by input name"
                    )
                a = np.load(item.path, mmap_mode="r", allow_pickle=False)
                if not isinstance(a, np.ndarray):  # numpy reads by content: a zip is an .npz whatever its name
                    a.close()
                    raise DataError(
                        f"{item.path} is an .npz archive (a zip file) named .npy: rename it to .npz "
                        f"(its arrays keyed by input name: {', '.join(names)})"
                    )
                return {names[0]: a}
            if item.kind == "npz":
                z = np.load(item.path, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise DataError(
                        f"{item.path} is a single .npy array named .npz: rename it to .npy (single-input models) "
                        f"or save it with np.savez(path, {names[0]}=array)"
                    )
                with z:
                    keys = set(z.files)
                    missing = [n for n in names if n not in keys]
                    if missing:
                        raise DataError(
                            f"{item.path} lacks input(s) {', '.join(missing)} (it has {', '.join(sorted(keys)) or 'nothing'}); "
                            f"key the arrays by the model's input names: {', '.join(names)}"
                        )
                    return {n: self._npz_member(item.path, z, n) for n in names}
            return self._read_pb(item)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {item.path}: {_numpy_load_message(e)}") from e

    @staticmethod
    def _npz_member(path: Path, z, name: str) -> np.ndarray:
        """One array of an .npz: numpy hands back the raw bytes of a member that is not
        in .npy format, and refuses object arrays (pickles), which qaudit never loads."""
        try:
            a = z[name]
        except ValueError as e:
            if "pickle" not in str(e) and "object" not in str(e).lower():
                raise
            raise DataError(
                f"{path}: member '{name}' holds Python objects (an object array, readable only by unpickling, "
                f"which qaudit never does); save a numeric array: np.savez(path, {name}=np.asarray(x, np.float32))"
            ) from None
        if not isinstance(a, np.ndarray):
            raise DataError(
                f"{path}: member '{name}' is not a numpy array (not in .npy format); "
                f"save the arrays with np.savez(path, {name}=array)"
            )
        return a

    def _read_pb(self, item: _Item) -> dict[str, np.ndarray]:
        files = sorted(
            item.path.glob("input_*.pb"),
            key=lambda p: int(p.stem.split("_")[-1]) if p.stem.split("_")[-1].isdigit() else 0,
        )
        names = [s.name for s in self.inputs]
        out: dict[str, np.ndarray] = {}
        for i, f in enumerate(files):
            regular_file(f, f"{self.what} data")
            t = onnx.TensorProto()
            t.ParseFromString(f.read_bytes())
            name = t.name if t.name in names else (names[i] if i < len(names) else None)
            if name is None:
                raise DataError(f"{f}: more input files than the model has inputs ({len(names)})")
            out[name] = numpy_helper.to_array(t)
        missing = [n for n in names if n not in out]
        if missing:
            raise DataError(f"{item.path} lacks input(s) {', '.join(missing)}")
        return out

    # -- validation ------------------------------------------------------
    def _batched(self, where: str, arrays: dict[str, np.ndarray]) -> Feeds:
        """Add the batch axis to single samples, and check every input's shape and dtype."""
        out, n, first = {}, None, None
        for spec in self.inputs:
            a = arrays[spec.name]
            rank = len(spec.shape)
            axis = self.layout.axes.get(spec.name)
            if axis is not None and a.ndim == rank - 1:
                a = np.expand_dims(a, axis)
            elif a.ndim != rank:
                how = (
                    f"one sample without batch axis {axis}, or a batch"
                    if axis is not None
                    else "it has no batch axis and is fed as it is; give its batch axis with --batch-axis NAME=AXIS"
                    if rank
                    else "a scalar, fed as it is"
                )
                raise DataError(
                    f"{where}: input '{spec.name}' has shape {tuple(a.shape)}, the model expects "
                    f"{spec.describe()} ({how})"
                )
            for ax, (got, want) in enumerate(zip(a.shape, spec.shape)):
                if ax != axis and want is not None and got != want:
                    raise DataError(
                        f"{where}: input '{spec.name}' has shape {tuple(a.shape)}, the model expects "
                        f"{spec.describe()} (axis {ax} must be {want})"
                    )
            if a.dtype != spec.dtype:
                raise DataError(
                    f"{where}: input '{spec.name}' is {a.dtype}, the model expects {spec.dtype}; "
                    f"convert with array.astype(np.{spec.dtype})"
                )
            if axis is not None:
                if n is None:
                    n, first = a.shape[axis], spec.name
                elif a.shape[axis] != n:
                    raise DataError(
                        f"{where}: inputs have different batch sizes ({first}: {n} on axis "
                        f"{self.layout.axes[first]}, {spec.name}: {a.shape[axis]} on axis {axis}); "
                        "give each input's batch axis with --batch-axis NAME=AXIS"
                    )
            out[spec.name] = a
        return Feeds(out, 1 if n is None else n)  # no input batched: the whole feed is one run

    def scan(self) -> int:
        """Check every file against the model's inputs; return the number of samples."""
        total = 0
        for where, feeds in self._items():
            for name, a in feeds.items():
                if a.dtype.kind == "f":
                    flat = a.reshape(-1)
                    for start in range(0, flat.size, _FINITE_CHUNK):
                        chunk = np.asarray(flat[start : start + _FINITE_CHUNK])
                        if not np.isfinite(chunk).all():
                            bad = "NaN" if np.isnan(chunk).any() else "Inf"
                            raise DataError(
                                f"{where}: input '{name}' contains {bad} values; clean the data "
                                f"(e.g. np.nan_to_num) or drop those samples"
                            )
            total += feeds.samples
        if total == 0:
            raise DataError(f"{self.what} data {self.description} holds no samples")
        self.n_samples = total
        self._scanned = True
        return total

    # -- streaming -------------------------------------------------------
    def fixed_batch(self) -> int | None:
        """The batch size the model fixes (1 when no input has a batch axis), or None."""
        return self.layout.fixed

    def count(self, max_samples: int | None) -> int:
        if not self._scanned:
            self.scan()
        return self.n_samples if max_samples is None else min(self.n_samples, max_samples)

    def batches(self, batch_size: int, max_samples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of ``batch_size`` samples (the model's fixed batch size if it has one).

        Samples of consecutive files are concatenated along each input's batch
        axis while their shapes agree and the inputs fed as they are hold the
        same values; a change (e.g. of sequence length) starts a new batch.
        """
        fixed = self.fixed_batch()
        bs = fixed or batch_size
        limit = self.count(max_samples)
        if fixed and limit % fixed:
            raise DataError(
                f"the model's batch size is fixed at {fixed} but {limit} {self.what} samples are given; "
                f"use a multiple of {fixed} (--max-samples) or export the model with a dynamic batch axis"
            )
        axes = self.layout.axes
        pending: list[dict[str, np.ndarray]] = []
        held = 0
        sent = 0

        def fits(feeds) -> bool:  # can feeds join the pending batch?
            for k, v in feeds.items():
                p, ax = pending[0][k], axes[k]
                if ax is None:  # fed as it is: the same values in every sample of a batch
                    if p.shape != v.shape or not np.array_equal(p, v):
                        return False
                elif p.shape[:ax] + p.shape[ax + 1 :] != v.shape[:ax] + v.shape[ax + 1 :]:
                    return False
            return True

        def flush():
            nonlocal pending, held
            feeds = Feeds(
                {  # np.asarray, not np.ascontiguousarray: that one makes a scalar [1]
                    k: np.asarray(
                        pending[0][k] if axes[k] is None else np.concatenate([p[k] for p in pending], axis=axes[k]),
                        order="C",
                    )
                    for k in pending[0]
                },
                held,
            )
            pending, held = [], 0
            return feeds

        for _where, feeds in self._items():
            n = feeds.samples
            start = 0
            while start < n and sent < limit:
                if pending and not fits(feeds):
                    yield flush()
                take = min(n - start, bs - held, limit - sent)
                pending.append({k: v if axes[k] is None else _take(v, axes[k], start, take) for k, v in feeds.items()})
                held += take
                sent += take
                start += take
                if held == bs:
                    yield flush()
            if sent >= limit:
                break
        if pending:
            yield flush()


def _numpy_load_message(e: Exception) -> str:
    """numpy says "contains pickled (object) data, use allow_pickle" for any file that
    is not .npy/.npz; that advice is wrong and unsafe here."""
    if "Object arrays" in str(e) or "Python objects" in str(e):
        return (
            "it holds an object array (Python objects, readable only by unpickling, which qaudit never does); "
            "save a numeric array with np.save"
        )
    if "allow_pickle" in str(e) or "pickle" in str(e).lower():
        return "not a valid .npy/.npz file (or it holds Python objects); save arrays with np.save / np.savez"
    return f"{type(e).__name__}: {e}"


def load_labels(labels, n_samples: int, exact: bool = True) -> np.ndarray:
    """Integer class labels, one per evaluation sample (``[N]`` ints, or ``[N, K]`` one-hot:
    exactly 0/1, one 1 per row): a ``.npy`` file, or (Python API) an array. Floats ``[N]``
    and scores ``[N, K]`` are refused, never rounded or argmaxed."""
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels)
        what = f"labels {path}"
        if not path.exists():
            raise DataError(f"labels file not found: {path}")
        regular_file(path, "labels")
        try:
            y = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DataError(
                f"cannot read labels {path}: {_numpy_load_message(e)}; save them with np.save as an integer array"
            ) from e
        if not isinstance(y, np.ndarray):  # a zip: numpy opens it as an .npz whatever its name
            y.close()
            raise DataError(f"labels {path} is an .npz archive (a zip file): save the labels with np.save as .npy")
    else:
        what = "labels"
        try:
            y = np.asarray(labels)
        except (ValueError, TypeError) as e:
            raise DataError(f"labels are not an array: {e}") from None
    if y.ndim == 2:
        y = _one_hot_classes(y, what)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{what} must be a 1-D integer array (or one-hot [N, K]), got {y.dtype}{list(y.shape)}")
    if len(y) < n_samples or (exact and len(y) != n_samples):
        raise DataError(f"{what} has {len(y)} entries for {n_samples} evaluation samples; give one label per sample")
    return y[:n_samples].astype(np.int64)


def _one_hot_classes(y: np.ndarray, what: str) -> np.ndarray:
    """The class of each row of a one-hot ``[N, K]`` array: every value exactly 0 or 1
    (any numeric dtype), one 1 per row. Scores, probabilities or a column of class
    numbers are refused: their argmax is not a label."""
    found = f"{y.dtype}{list(y.shape)}"
    if y.dtype.kind not in "biuf":
        raise DataError(f"{what} must be integer class labels [N] or one-hot [N, K], got {found}")
    binary = (y == 0) | (y == 1)
    if not binary.all():
        r, c = np.argwhere(~binary)[0]
        hint = " (a column of class numbers? save labels.reshape(-1))" if y.shape[1] == 1 else ""
        hint = hint or (
            " (scores or probabilities? save the class numbers: y.argmax(1))" if y.dtype.kind == "f" else ""
        )
        raise DataError(
            f"{what} {found} is not one-hot: row {r} holds {y[r, c].item()!r} at column {c}, and one-hot labels "
            f"hold only 0 and 1{hint}; save integer class labels [N]"
        )
    ones = np.count_nonzero(y, axis=1)
    if (ones != 1).any():
        r = int(np.flatnonzero(ones != 1)[0])
        raise DataError(
            f"{what} {found} is not one-hot: row {r} holds {int(ones[r])} ones, and a one-hot row holds exactly one; "
            "save integer class labels [N]"
        )
    return y.argmax(axis=1)


def describe_labels(labels) -> str | None:
    """What the report records as the labels: the path, or the array's shape."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return str(labels)
    a = np.asarray(labels)
    return f"array {a.dtype}{list(a.shape)}"


@dataclass
class Inputs:
    """The audit's checked inputs: the model, its calibration and evaluation data, the labels."""

    model: LoadedModel
    calib: Dataset
    evaluation: Dataset  # the calibration data when no evaluation data is given
    n_calib: int
    n_eval: int
    labels: np.ndarray | None
    #: False with --quantized: nothing is calibrated, ``calib`` is the evaluation data (the probe reads it)
    calibrated: bool = True

    def first_batch(self) -> dict[str, np.ndarray]:
        """One calibration batch: one sample, or the model's fixed batch."""
        fixed = self.calib.fixed_batch()
        return next(iter(self.calib.batches(fixed or 1, None if fixed else 1)))

    #: what the labels came from when no --labels was given (class subfolders), else None
    labels_from: str | None = None

    def describe(self) -> dict:
        if not self.calibrated:
            out = {"calib": None, "eval": self.evaluation.description, "batch_axes": self.calib.layout.as_dict()}
        else:
            out = {
                "calib": self.calib.description,
                "eval": self.evaluation.description if self.evaluation is not self.calib else None,
                "batch_axes": self.calib.layout.as_dict(),
            }
        return {**out, **self.source_info()}

    def source_info(self) -> dict:
        """The report's ``data.sources``, ``preprocess``, ``class_names`` and ``labels`` (only for
        image and WAV folders and loader scripts: absent for .npy files and arrays)."""
        sets = {"calib": self.calib if self.calibrated else None, "eval": self.evaluation}
        info = {k: d.source.info() for k, d in sets.items() if d is not None and hasattr(d.source, "info")}
        if not info:
            return {}
        shared = ("preprocess", "class_names")
        out: dict = {"sources": {k: {a: b for a, b in i.items() if a not in shared} for k, i in info.items()}}
        out["sources"] = {k: out["sources"].get(k) for k in sets}
        for key in shared:
            found = [i[key] for i in info.values() if key in i]
            if found:
                out[key] = found[-1]  # the evaluation data's, else the calibration data's
        if self.labels_from:
            out["labels"] = self.labels_from
        return out


def open_inputs(cfg) -> Inputs:
    """Load and check everything the audit reads, before any session runs: the model
    (:func:`~qaudit.pipeline.load.load_model`), every data file or item against its
    inputs, and the labels against the evaluation samples. ``cfg``: an AuditConfig."""
    if cfg.output_model is not None and cfg.output_model.resolve() == cfg.model.resolve():
        raise ConfigError("--output-model must not be the input model: qaudit never modifies the user's model")
    lm = load_model(cfg.model)
    layout = batch_layout(lm.inputs, cfg.batch_axis)
    quantized = getattr(cfg, "quantized", None) is not None  # nothing is calibrated: --calib is not read
    prep, names = getattr(cfg, "preprocess", None), getattr(cfg, "class_names", None)
    calib = None if quantized else Dataset(cfg.calib, lm.inputs, "calibration", layout, prep, names)
    evaluation = Dataset(cfg.eval, lm.inputs, "evaluation", layout, prep, names) if cfg.eval is not None else calib
    used = [d.source for d in (calib, evaluation) if d is not None]
    if prep and not any(getattr(s, "recipe", None) for s in used):
        raise ConfigError(
            "--preprocess (preprocess) applies to image and WAV folders, and the data given is neither: drop it "
            "(.npy/.npz files and loader scripts are fed as they are)"
        )
    if names is not None and not any(getattr(s, "class_names", None) for s in used):
        raise ConfigError("--class-names applies to a folder of class subfolders, and the data given has none")
    n_calib = 0 if quantized else calib.count(cfg.max_samples)
    n_eval = evaluation.count(cfg.max_samples)
    calib = calib or evaluation  # the probe's sample, with --quantized
    labels, labels_from = None, None
    if cfg.labels is not None:  # --labels wins over class subfolders
        labels = load_labels(cfg.labels, n_eval, exact=cfg.max_samples is None)
    elif getattr(evaluation.source, "labels", None) is not None:
        labels = load_labels(evaluation.source.labels, n_eval, exact=cfg.max_samples is None)
        labels_from = f"class subfolders of {evaluation.source.path}"
    return Inputs(lm, calib, evaluation, n_calib, n_eval, labels, calibrated=not quantized, labels_from=labels_from)
