"""The limits of one tenant's child: memory, wall-clock deadline, CPU time."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one tenant's work in one run may use; each limit stops that tenant only."""

    memory_bytes: int  # resident memory of the tenant's process
    deadline_s: float  # wall-clock time of its work in this run
    cpu_s: int  # CPU time of its process (all threads)

    def memory_text(self) -> str:
        gib = self.memory_bytes / (1 << 30)
        return f"{gib:g} GiB" if gib >= 1 and gib == round(gib, 2) else f"{self.memory_bytes // MIB} MiB"

    @staticmethod
    def duration_text(seconds: float) -> str:
        return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


class LimitExceeded(RuntimeError):
    """A tenant's child went over one of its limits and was stopped (a permanent failure: the
    same input needs the same resources again)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit  # memory | deadline | cpu


class ChildDied(RuntimeError):
    """A tenant's child ended without reporting its result (a crash or a signal)."""
