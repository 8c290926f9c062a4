"""The run worker's side: one fork server per run, one child per tenant, watched for limits.

`ForkServer.run(...)` starts a tenant's child, sends it its job, and yields what the child
sends, while a watchdog thread checks the child's resident memory and deadline and kills it
(SIGKILL) when it goes over; the CPU-time limit is the kernel's (RLIMIT_CPU, SIGXCPU). When
the child ends without a result, `run` raises `LimitExceeded` (naming the limit, its value and
what the child was doing) or `ChildDied`. Leaving `run` early (an exception in the consumer, a
cancelled run) kills the child; `close()` kills the fork server's whole process group.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from etl_platform.isolation import channel, progress
from etl_platform.isolation.limits import ChildDied, LimitExceeded, Limits

POLL_S = 0.05
START_TIMEOUT_S = 300.0


def resident_bytes(pid: int) -> int | None:
    """VmRSS of a process (None: gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, OSError):
        return None
    return 0


class Watchdog(threading.Thread):
    """Kills a child that goes over its memory limit or past its deadline; remembers why."""

    def __init__(self, pid: int, limits: Limits, last_progress: dict[str, Any]) -> None:
        super().__init__(name=f"watchdog-{pid}", daemon=True)
        self.pid, self.limits, self.last_progress = pid, limits, last_progress
        self.deadline = time.monotonic() + limits.deadline_s
        self.stopped = threading.Event()
        self.reason: LimitExceeded | None = None
        self.peak_bytes = 0

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            rss = resident_bytes(self.pid)
            if rss is None:
                return
            self.peak_bytes = max(self.peak_bytes, rss)
            if rss > self.limits.memory_bytes:
                self._kill("memory", f"memory limit {self.limits.memory_text()} reached")
            elif time.monotonic() > self.deadline:
                self._kill("deadline", f"deadline of {Limits.duration_text(self.limits.deadline_s)} reached")
            if self.reason is not None:
                return

    def _kill(self, limit: str, what: str) -> None:
        doing = progress.describe(self.last_progress)
        self.reason = LimitExceeded(limit, what + (f" {doing}" if doing else ""))
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ForkServer:
    """The fork server of one run (see `zygote`)."""

    def __init__(self, env: Mapping[str, str], preload: Sequence[str] = ()) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.jobs = 0
        self.peaks: dict[str, int] = {}  # label -> peak resident bytes of its last child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "etl_platform.isolation.zygote", str(theirs.fileno()), str(os.getpid()), *preload],
            env=dict(env),
            pass_fds=[theirs.fileno()],
            start_new_session=True,  # its own process group: close() kills it and every child at once
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        answer = self._control_message(START_TIMEOUT_S)
        if answer is None or answer[0] != "ready":
            self.close()
            raise ChildDied(f"the tenants' fork server did not start (exit status {self.process.poll()})")

    def _control_message(self, timeout: float) -> tuple | None:
        ready, _, _ = select.select([self.control], [], [], timeout)
        if not ready:
            return None
        data = self.control.recv(1 << 16)
        return pickle.loads(data) if data else None

    def run(
        self, target: str, payload: Any, env: Mapping[str, str], limits: Limits, label: str = ""
    ) -> Iterator[Any]:
        """Run `target(payload, sock)` ("module:function") in a new child whose environment is
        `env`; yield every message it sends but progress (kept to name what a limit
        interrupted). `label` names the child in `peaks`."""
        self.jobs += 1
        job = self.jobs
        ours, theirs = socket.socketpair()
        socket.send_fds(self.control, [pickle.dumps(("start", job, int(limits.cpu_s)))], [theirs.fileno()])
        theirs.close()
        started = self._control_message(START_TIMEOUT_S)
        if started is None or started[:2] != ("started", job):
            ours.close()
            raise ChildDied(f"the fork server did not start the tenant's process ({started!r})")
        pid = started[2]
        last: dict[str, Any] = {}
        watchdog = Watchdog(pid, limits, last)
        watchdog.start()
        exit_report = None
        try:
            channel.send(ours, {"target": target, "env": dict(env), "payload": payload})
            crash = None
            open_channel = True
            while open_channel or exit_report is None:
                waiting = [self.control] + ([ours] if open_channel else [])
                ready, _, _ = select.select(waiting, [], [], 1.0)
                if ours in ready:
                    try:
                        message = channel.receive(ours)
                    except (channel.ChannelClosed, ConnectionError):
                        open_channel = False
                        continue
                    if isinstance(message, dict) and message.get("op") == "progress":
                        last.clear()
                        last.update(message["state"])
                    elif isinstance(message, dict) and message.get("op") == "crash":
                        crash = message
                    else:
                        yield message
                if self.control in ready:
                    report = self._control_message(0)
                    if report is None:
                        raise ChildDied("the tenants' fork server ended")
                    if report[0] == "exited" and report[1] == job:
                        exit_report = report
        finally:
            watchdog.stopped.set()
            if exit_report is None:  # leaving early: the consumer failed or the run is cancelled
                _kill(pid)
            ours.close()
        watchdog.join()
        _, _, _, status, maxrss_kb, cpu_s = exit_report
        self.last_peak_bytes = max(watchdog.peak_bytes, maxrss_kb * 1024)
        self.peaks[label or str(job)] = self.last_peak_bytes
        self.last_cpu_s = cpu_s
        if watchdog.reason is not None:
            raise watchdog.reason
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            doing = progress.describe(last)
            if sig == signal.SIGXCPU:
                what = f"CPU time limit of {Limits.duration_text(limits.cpu_s)} reached"
                raise LimitExceeded("cpu", what + (f" {doing}" if doing else ""))
            raise ChildDied(
                f"the tenant's process was killed by signal {signal.Signals(sig).name}"
                + (f" {doing}" if doing else "")
                + (" (the kernel's out-of-memory killer?)" if sig == signal.SIGKILL else "")
            )
        if crash is not None:
            raise ChildDied(f"the tenant's process failed: {crash['error']}: {crash['message']}")
        if os.WEXITSTATUS(status) != 0:
            raise ChildDied(f"the tenant's process exited with status {os.WEXITSTATUS(status)}")

    def close(self) -> None:
        """Kill the fork server and every child left (its process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.control.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
