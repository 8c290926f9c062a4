"""Length-prefixed pickled messages over a socket between the run worker and a tenant's child.

Both ends are the platform's own code (the child parses untrusted data, but only sends plain
figures, texts it has redacted and our own dataclasses). A frame larger than `MAX_FRAME` is
refused, so a faulty child cannot make the run worker allocate without bound.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

MAX_FRAME = 64 << 20
_HEADER = struct.Struct("!I")


class ChannelClosed(EOFError):
    """The other end closed the channel (or died) before a whole message arrived."""


def send(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_FRAME:
        raise ValueError(f"message of {len(data)} bytes is larger than the channel's {MAX_FRAME}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ChannelClosed(f"frame of {size} bytes refused (limit {MAX_FRAME})")
    return pickle.loads(_exactly(sock, size))
