"""The child's side of its channel: one lock for every message (the loading code may report
progress from dlt's threads), log records forwarded to the run worker, progress installed."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from etl_platform.isolation import channel, progress


class Outbox:
    """Thread-safe sending to the run worker."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message: Any) -> None:
        with self.lock:
            channel.send(self.sock, message)


class ForwardingHandler(logging.Handler):
    """Sends the child's log records (already redacted when created) to the run worker, which
    logs them as its own."""

    def __init__(self, outbox: Outbox, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.outbox.send({"op": "log", "logger": record.name, "level": record.levelno,
                              "message": record.getMessage()})
        except Exception:  # noqa: BLE001 - a log line never fails the work
            pass


def attach(sock: socket.socket, loggers: tuple[str, ...] = ("etl_platform", "dlt")) -> Outbox:
    """Wire a child's progress and logs to its channel; returns its outbox."""
    outbox = Outbox(sock)
    progress.install(lambda state: outbox.send({"op": "progress", "state": state}))
    handler = ForwardingHandler(outbox)
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    return outbox
