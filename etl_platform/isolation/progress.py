"""What a tenant's child is doing right now, so that a limit it hits can name it.

Loading code calls `step(...)` when it starts something (a source, normalization) and
`note(...)` as it goes (a page, a file line); both are cheap no-ops outside a tenant's child.
In a child, each change is sent to the run worker at once, so it still knows the last one if
the child is killed (out of memory, past its deadline).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}
_SINK: list[Callable[[dict[str, Any]], None]] = []


def install(sink: Callable[[dict[str, Any]], None]) -> None:
    """In a tenant's child: send every progress change to `sink` (the run worker)."""
    _SINK[:] = [sink]


def step(what: str, **fields: Any) -> None:
    """A new step of the tenant's work (`loading`, `normalizing`, `metrics`), with its fields
    (e.g. `source='api'`); details of the previous step are forgotten."""
    with _LOCK:
        _STATE.clear()
        _STATE.update({"step": what, **fields})
        _publish()


def note(**fields: Any) -> None:
    """Details of the current step (`page=3`, `url=...`, `line=...`)."""
    with _LOCK:
        _STATE.update(fields)
        _publish()


def _publish() -> None:
    if _SINK:
        try:
            _SINK[0](dict(_STATE))
        except OSError:  # the run worker is gone: the parent-death signal ends this process
            pass


def describe(state: dict[str, Any] | None) -> str:
    """`while loading source 'api' (page 3)`, or '' when nothing is known."""
    if not state or not state.get("step"):
        return ""
    text = f"while {state['step']}"
    if state.get("source"):
        text += f" source {state['source']!r}"
    details = [f"{k} {state[k]}" for k in ("page", "file", "line", "resource", "day") if state.get(k) is not None]
    return text + (f" ({', '.join(details)})" if details else "")
