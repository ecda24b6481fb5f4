"""Data sources beyond ``.npy``/``.npz`` files: image folders (with class subfolders),
WAV folders and loader scripts. :func:`qaudit.pipeline.data.source` is the one place
that picks a source; each source here has the same small protocol as the file and
memory sources of :mod:`qaudit.pipeline.data`:

* ``path`` (or None), ``description`` (what the report records as the data),
  ``kind`` (``"images"``, ``"audio"``, ``"loader"``);
* ``read(dataset)``: ``(where, {input name: array})`` for every item, streamed;
* ``info()``: what the report records beside the description (the preprocessing,
  the class names, the loader), and ``labels`` (class subfolders) or None.

Decoding is lazy: an item is decoded when the batches reach it, on a worker
thread one item ahead of the consumer (:func:`ahead`), so decoding runs beside
inference and memory holds at most two decoded items whatever the number of files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

#: decoded items held ahead of the consumer
AHEAD = 2


def ahead(jobs: Iterable[Callable[[], object]], depth: int = AHEAD) -> Iterator:
    """The result of each job, in order, computed on one worker thread up to ``depth`` jobs
    ahead of the consumer; an error is raised where its job's result is taken. Closing the
    iterator early cancels what has not started (Pillow's decoders release the GIL)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    it = iter(jobs)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qaudit-decode") as pool:
        try:
            for job in it:
                pending.append(pool.submit(job))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
