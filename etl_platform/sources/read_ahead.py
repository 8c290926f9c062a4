"""Read ahead: an iterator's items made by a thread of their own while the caller uses the last.

    with read_ahead(tables_of(file)) as tables:
        for table in tables:   # the next tables are being parsed meanwhile
            write(table)

The CSV source uses it so that parsing the file (pyarrow's reader and kernels, which release the
GIL) overlaps dlt's extract of the tables already made (schema, Parquet). Items come in order, at
most `depth` ahead (memory stays bounded), and the producer's exception is raised where its item
would have come, so the caller sees exactly what the plain iterator would give. The producer runs
in a copy of the caller's context variables. Leaving the block, normally or not, stops the
producer, closes the iterator in the producer's thread and waits for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_ITEM, _END, _FAILED = "item", "end", "failed"
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer left


@contextlib.contextmanager
def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[Iterator[T]]:
    """`items` in order, made up to `depth` ahead by a thread of their own (see the module)."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put((kind, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    source = iter(items)  # here: an iterator that cannot even start fails in the caller's thread

    def produce() -> None:
        try:
            for item in source:
                if not put(_ITEM, item):
                    return
            put(_END, None)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_FAILED, exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def consume() -> Iterator[T]:
        while True:
            kind, value = handoff.get()
            if kind == _END:
                return
            if kind == _FAILED:
                raise value
            yield value

    producer = threading.Thread(
        target=contextvars.copy_context().run, args=(produce,), name="read-ahead", daemon=True
    )
    producer.start()
    try:
        yield consume()
    finally:
        stop.set()
        producer.join()  # at most the item in its hands (a slow read: the source's own time limits)
