"""Which process executes a run (tag `etl/worker`), and whether it still lives.

Every run records its worker at its first step (`tags.ensure_run_tags`):
`host:pid:start:boot:pidns` — the host name, the pid and the process's start time (so that a pid
reused by a later process is not taken for the worker), the kernel's boot id and the id of its
PID namespace. A pid means something only in its own namespace on its own boot: containers on
the host network share the host's name, and each has its own pids. The dead-run sweep
(`automation/dead_runs.py`) judges only workers of its own boot and PID namespace; any other
(another machine, another container, a tag written before the boot and namespace were recorded)
cannot be told alive or dead here, and is left alone.
"""

from __future__ import annotations

import os
import socket

WORKER_TAG = "etl/worker"  # host:pid:start ticks:boot id:pid namespace of the process executing the run


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


def boot_id() -> str:
    """The kernel's boot id (a UUID drawn at every boot; '' where there is none)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """The id of this process's PID namespace ('pid:[4026531836]' -> '4026531836'; '' unknown)."""
    try:
        link = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return link.partition("[")[2].rstrip("]") or ""


def this_worker() -> str:
    """The value of `etl/worker` for the current process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}:{boot_id()}:{pid_namespace()}"


def worker_alive(worker: str) -> bool | None:
    """True/False for a worker of this boot and PID namespace; None when it is not (another
    machine or container, or an older tag without them): its pid cannot be looked up here."""
    parts = worker.split(":")
    if len(parts) != 5:
        return None
    _host, pid, ticks, boot, namespace = parts
    if not boot or not namespace or boot != boot_id() or namespace != pid_namespace() or not pid.isdigit():
        return None
    current = _start_ticks(int(pid))
    return current is not None and (not ticks or current == ticks)
