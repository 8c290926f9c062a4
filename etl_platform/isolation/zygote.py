"""The fork server of a run: started once by the run worker, it imports the loading code,
then forks one child per tenant on request.

    python -m etl_platform.isolation.zygote CONTROL_FD PARENT_PID MODULE[:FUNCTION]...

(a `module:function` entry is imported, then the function is called once, before any fork: what
every child would otherwise pay itself, paid once).

Control messages (one per SOCK_SEQPACKET datagram) from the run worker: `("start", id, cpu_s)`
with the child's channel socket attached (SCM_RIGHTS). Answers: `("ready",)` once the modules
are imported, `("started", id, pid)` and `("exited", id, pid, wait status, peak RSS in KiB,
CPU seconds)`. The child reads its job from its channel (`child_main`). The server exits when
the run worker closes the control socket, killing any child left.
"""

from __future__ import annotations

import importlib
import os
import pickle
import resource
import select
import signal
import socket
import sys
import traceback
from typing import Any

from etl_platform.config import secrets
from etl_platform.isolation import channel
from etl_platform.isolation.lifeline import die_with_parent
from etl_platform.security.redaction import redact

CONTROL_BUFFER = 1 << 16


def child_main(sock: socket.socket, parent: int, cpu_s: int) -> None:
    """In the forked child: limits, then the job sent on `sock`: `{"target": "pkg.mod:func",
    "env": {...}, "payload": ...}` (`env` replaces the environment); `func(payload, sock)` sends
    its own messages."""
    die_with_parent(parent)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    if cpu_s > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    code = 0
    try:
        job = channel.receive(sock)
        secrets.replace_environment(job.get("env") or {})  # what the run worker chose for this tenant
        module, _, name = job["target"].partition(":")
        func = getattr(importlib.import_module(module), name)
        func(job.get("payload"), sock)
    except channel.ChannelClosed:
        code = 3  # the run worker went away
    except BaseException as exc:  # noqa: BLE001 - reported to the run worker, then exit
        code = 1
        try:
            channel.send(sock, {"op": "crash", "error": type(exc).__name__, "message": redact(str(exc)) or "",
                                "traceback": redact("".join(traceback.format_exception(exc)))})
        except Exception:  # noqa: BLE001 - nothing more to tell anyone
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(control: socket.socket, parent: int) -> None:
    children: dict[int, int] = {}  # pid -> job id

    def reap() -> None:
        while children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = children.pop(pid, None)
            if job is not None:
                cpu = round(usage.ru_utime + usage.ru_stime, 3)
                control.send(pickle.dumps(("exited", job, pid, status, usage.ru_maxrss, cpu)))

    try:
        while True:
            ready, _, _ = select.select([control], [], [], 0.05)
            reap()
            if not ready:
                continue
            data, fds, _, _ = socket.recv_fds(control, CONTROL_BUFFER, 1)
            if not data:
                return  # the run worker closed the control socket
            message: Any = pickle.loads(data)
            if message[0] != "start" or not fds:
                continue
            _, job, cpu_s = message
            sock = socket.socket(fileno=fds[0])
            pid = os.fork()
            if pid == 0:
                control.close()
                child_main(sock, parent=os.getppid(), cpu_s=cpu_s)
            sock.close()
            children[pid] = job
            control.send(pickle.dumps(("started", job, pid)))
    finally:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> None:
    control_fd, parent, *modules = argv
    die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run worker decides when this ends
    control = socket.socket(fileno=int(control_fd))
    for entry in modules:  # "module" or "module:function" (called once, before any fork)
        module, _, function = entry.partition(":")
        imported = importlib.import_module(module)
        if function:
            getattr(imported, function)()
    control.send(pickle.dumps(("ready",)))
    serve(control, int(parent))


if __name__ == "__main__":
    main(sys.argv[1:])
