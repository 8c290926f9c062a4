"""Which process executes a run (tag `etl/worker`), and whether it still lives.

Every run records its worker at its first step (`tags.ensure_run_tags`): host, pid and the
process's start time, so that a pid reused by a later process is not taken for the worker. The
dead-run sweep (`automation/dead_runs.py`) fails started runs whose worker is gone.
"""

from __future__ import annotations

import os
import socket

WORKER_TAG = "etl/worker"  # host:pid:start ticks of the process executing the run


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (None: no such process, or a zombie:
    killed and not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, OSError):
        return None
    if not fields or fields[0] in ("Z", "X") or len(fields) <= 19:
        return None
    return fields[19]


def this_worker() -> str:
    """The value of `etl/worker` for the current process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def worker_alive(worker: str, host: str | None = None) -> bool | None:
    """True/False for a worker on this host; None when it ran elsewhere (cannot tell)."""
    parts = worker.rsplit(":", 2)
    if len(parts) != 3:
        return None
    name, pid, ticks = parts
    if name != (host or socket.gethostname()) or not pid.isdigit():
        return None
    current = _start_ticks(int(pid))
    return current is not None and (not ticks or current == ticks)
