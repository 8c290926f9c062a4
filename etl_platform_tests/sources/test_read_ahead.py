"""`read_ahead`: the items of an iterator made by a thread of their own, so that the CSV source
parses the next batches while dlt writes the last. What the caller sees is exactly what the plain
iterator gives (items, order, the error and where it comes); leaving early stops the producer."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator

import pytest

from etl_platform.sources.read_ahead import read_ahead

WHO = contextvars.ContextVar("who", default="nobody")


def test_items_come_in_order_and_all_of_them() -> None:
    with read_ahead(iter(range(1000)), depth=3) as items:
        assert list(items) == list(range(1000))


def test_the_producer_runs_while_the_consumer_holds_an_item() -> None:
    """The consumer waits, holding item 0, until the producer has made item 1: a plain iterator
    would never get there (the wait would time out)."""
    second_made = threading.Event()

    def numbers() -> Iterator[int]:
        yield 0
        second_made.set()
        yield 1

    with read_ahead(numbers()) as items:
        first = next(items)
        assert second_made.wait(timeout=10), "item 1 was not made while item 0 was in use"
        assert [first, *items] == [0, 1]


def test_an_error_comes_where_its_item_would_have_come() -> None:
    class Broken(Exception):
        pass

    def failing() -> Iterator[int]:
        yield from range(5)
        raise Broken("record 6 is unreadable")

    seen = []
    with pytest.raises(Broken, match="record 6 is unreadable"):
        with read_ahead(failing()) as items:
            for item in items:
                seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_leaving_early_stops_the_producer_and_closes_its_iterator() -> None:
    made: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                made.append(n)
                yield n
                n += 1
        finally:
            closed.set()

    with read_ahead(endless(), depth=2) as items:
        assert next(items) == 0
    # the block waited for the producer: its iterator is closed, and it ran at most `depth` (the
    # queue) + 1 (in its hands) items past the one taken
    assert closed.is_set()
    assert len(made) <= 1 + 2 + 1
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]


def test_a_consumer_error_stops_the_producer() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    with pytest.raises(RuntimeError):
        with read_ahead(endless()) as items:
            next(items)
            raise RuntimeError("dlt failed writing")
    assert closed.is_set()


def test_the_producer_sees_the_callers_context_variables() -> None:
    def whose() -> Iterator[str]:
        yield WHO.get()

    token = WHO.set("tenant acme")
    try:
        with read_ahead(whose()) as items:
            assert list(items) == ["tenant acme"]
    finally:
        WHO.reset(token)


def test_an_iterable_that_cannot_start_fails_at_once() -> None:
    class Unopenable:
        def __iter__(self) -> Iterator[int]:
            raise OSError("the file is gone")

    with pytest.raises(OSError, match="the file is gone"):
        with read_ahead(Unopenable()):
            pass
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
