"""Throwaway PostgreSQL databases for the benchmarks (ETL_BENCH_POSTGRES_URL: the admin URL)."""

from __future__ import annotations

import os
import uuid

import psycopg

ADMIN_URL = os.environ.get("ETL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def create_database(prefix: str) -> str:
    """A fresh database named `<prefix>_<random>`; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def drop_database(url: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
