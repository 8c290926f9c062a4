"""DuckDB's memory in a raw load (`duckdb_load_memory_mb`): enough for every thread's row group on
the CPUs the process may use, and never more than a quarter of a tenant's memory limit, so that a
big load on a many-core host spills to disk instead of getting the tenant's process killed."""

from __future__ import annotations

import os

import pytest

from etl_platform.config import settings


@pytest.mark.parametrize(
    ("cpus", "tenant_mb", "expected"),
    [
        (1, 2048, 256),  # at least 256 MB
        (2, 2048, 256),
        (3, 2048, 384),  # 128 MB a CPU
        (16, 2048, 512),  # a quarter of the tenant's 2 GiB, not 2 GiB
        (64, 8192, 2048),
        (16, 512, 256),  # a small limit: still the floor
    ],
)
def test_load_memory_follows_the_cpus_within_the_tenants_limit(
    cpus: int, tenant_mb: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("ETL_TENANT_MEMORY_LIMIT_MB", str(tenant_mb))
    assert settings.duckdb_load_memory_mb() == expected


def test_the_cpus_are_those_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container pinned to 2 CPUs of a 64-CPU host gets 256 MB, not 64 × 128 MB."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("ETL_TENANT_MEMORY_LIMIT_MB", "65536")
    assert settings.duckdb_load_memory_mb() == 256
