"""Looking into another process from a test: which process holds a TCP connection, and whether
given bytes are anywhere in its memory (as root, through /proc/<pid>/mem)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

_MAPS = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+)")
_SPECIAL = ("[vvar]", "[vsyscall]", "[vvar_vclock]")  # kernel pages that cannot be read


def _socket_inode(local_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                return fields[9]
    return None


def pid_of_connection(local_port: int) -> int | None:
    """The process owning the TCP socket bound to `local_port` (a client's ephemeral port)."""
    inode = _socket_inode(local_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(proc.name)
        except OSError:
            continue
    return None


def memory_holds(pid: int, needles: Iterable[bytes]) -> dict[bytes, bool]:
    """For each needle: whether it occurs in the process's readable memory."""
    wanted = list(needles)
    found = {n: False for n in wanted}
    longest = max(len(n) for n in wanted)
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            match = _MAPS.match(line)
            if not match or "r" not in match.group(3) or line.rstrip().endswith(_SPECIAL):
                continue
            start, end = int(match.group(1), 16), int(match.group(2), 16)
            tail = b""
            position = start
            while position < end:
                size = min(1 << 22, end - position)
                try:
                    mem.seek(position)
                    chunk = mem.read(size)
                except (OSError, ValueError, OverflowError):
                    break
                data = tail + chunk
                for needle in wanted:
                    if not found[needle] and needle in data:
                        found[needle] = True
                tail = data[-longest:]
                position += size
            if all(found.values()):
                break
    return found
