"""Ports for servers that must listen for a whole test (a container stack's services).

A port the kernel hands out for `bind(0)` comes from the ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range), from which it also picks every client's local port: a
client's connection (or its TIME-WAIT) may take it before the service binds it. These ports are
chosen outside that range, and checked free on 127.0.0.1.
"""

from __future__ import annotations

import random
import socket

_GIVEN: set[int] = set()  # never the same port twice in one test process


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            low, high = (int(x) for x in handle.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return low, high


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def service_port() -> int:
    """A free port on 127.0.0.1 outside the ephemeral range (and above the registered ports' busiest
    part: 10000-)."""
    low, high = ephemeral_range()
    candidates = [p for p in range(10000, 65536) if (p < low or p > high) and p not in _GIVEN]
    for port in random.sample(candidates, min(200, len(candidates))):
        if _free(port):
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free port outside the ephemeral range {low}-{high}")
