"""Work run in tenants' children by the supervisor tests (imported by the fork server)."""

from __future__ import annotations

import os
import time

from etl_platform.isolation import progress
from etl_platform.isolation.child import attach


def report_env(names, sock):
    """Sends the values of `names` as this child sees them, and its /proc environment block."""
    out = attach(sock)
    progress.step("loading", source="api")
    with open("/proc/self/environ", "rb") as handle:
        block = handle.read().decode(errors="replace")
    out.send({"op": "env", "values": {n: os.environ.get(n) for n in names}, "block": block})


def grow(payload, sock):
    """Allocates 50 MiB at a time until stopped."""
    attach(sock)
    progress.step("loading", source="api")
    progress.note(page=3)
    held = []
    while True:
        held.append(bytearray(50 << 20))
        time.sleep(0.01)


def sleep_forever(payload, sock):
    attach(sock)
    progress.step("loading", source="slow")
    time.sleep(3600)


def spin(payload, sock):
    attach(sock)
    progress.step("normalizing")
    while True:
        pass


def fail(payload, sock):
    attach(sock)
    raise ValueError("the loading code broke")


def pid_then_sleep(payload, sock):
    out = attach(sock)
    out.send({"op": "pid", "pid": os.getpid()})
    time.sleep(3600)


def report_warm(payload, sock):
    """Sends which of `payload` (module names) this child had before it ran, and whether dlt's
    plugin registry was already built (by the fork server, before the fork)."""
    import sys

    from dlt.common.configuration.container import Container
    from dlt.common.configuration.plugins import PluginContext

    out = attach(sock)
    out.send({"op": "warm", "modules": {n: n in sys.modules for n in payload},
              "plugins": PluginContext in Container()})
