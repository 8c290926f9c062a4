"""Deleting history from Dagster's storage, one bounded statement at a time, while keeping what
Dagster reads to show the present: each partition's latest materialization (and a later attempt
that failed or is in progress), and each check's latest result per partition.

Dagster's public API deletes whole runs only (`DagsterInstance.delete_run`): that would take
each partition's latest materialization and check result with the run that wrote it, and it
leaves the run's `asset_check_executions` rows behind. No public API deletes single events or
check executions, so these deletes use Dagster's own table definitions
(`dagster._core.storage.event_log.schema`) through the storage's own connections; whole runs
still go through `delete_run`. "Latest" is what Dagster's reads take: the highest storage id of
an (asset, event type, partition), of an (asset, check, partition) row.

On SQLite storage, events live in one database per run and asset, check and run status events
are mirrored in the index database (with other ids): both are purged, the run's rows matched to
the index rows they mirror by type, asset, partition and time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as db
from dagster import DagsterEventType, DagsterInstance

# no public API deletes single events or check executions (see the module docstring)
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetEventTagsTable,
    SqlEventLogStorageTable,
)

Events = SqlEventLogStorageTable
Checks = AssetCheckExecutionsTable
MATERIALIZATION = DagsterEventType.ASSET_MATERIALIZATION.value
# an asset event is superseded by a newer event of these types for the same asset and partition:
# a failed or planned attempt followed by a materialization no longer tells the partition's status
SUPERSEDED_BY = {
    MATERIALIZATION: (MATERIALIZATION,),
    DagsterEventType.ASSET_OBSERVATION.value: (DagsterEventType.ASSET_OBSERVATION.value,),
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value: (
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
        MATERIALIZATION,
    ),
    DagsterEventType.ASSET_FAILED_TO_MATERIALIZE.value: (
        DagsterEventType.ASSET_FAILED_TO_MATERIALIZE.value,
        MATERIALIZATION,
    ),
    DagsterEventType.FRESHNESS_STATE_CHANGE.value: (DagsterEventType.FRESHNESS_STATE_CHANGE.value,),
}
# the platform's index for "the latest result of a check per partition"; dagster-postgres indexes
# check executions by (asset, check, target materialization, partition) only
CHECK_PARTITION_INDEX = "idx_etl_asset_check_executions_partition"


@dataclass
class Deleted:
    """Rows deleted (or, in a dry run, that would be), and the largest single statement."""

    events: int = 0
    check_rows: int = 0
    statements: int = 0
    largest_statement: int = 0

    def add(self, rows: int, *, checks: bool = False) -> None:
        if checks:
            self.check_rows += rows
        else:
            self.events += rows
        self.statements += 1
        self.largest_statement = max(self.largest_statement, rows)


class HistoryStore:
    """Dagster's event log and run storage as the purge sees them."""

    def __init__(self, instance: DagsterInstance, batch_size: int, dry_run: bool = False) -> None:
        self.instance = instance
        self.storage = instance.event_log_storage
        self.batch_size = max(1, batch_size)
        self.dry_run = dry_run
        self.sharded = self.storage.is_run_sharded
        self.postgres = self.storage.__class__.__module__.startswith("dagster_postgres")
        self.deleted = Deleted()
        self._shared = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """PostgreSQL: one connection for the whole purge (dagster-postgres connects in autocommit
        mode, so each statement is still its own transaction; a new connection per statement cost
        more than the statements). SQLite: a connection, hence a transaction, per statement."""
        if not self.postgres:
            yield
            return
        with self.storage.index_connection() as conn:
            self._shared = conn
            try:
                yield
            finally:
                self._shared = None

    @contextlib.contextmanager
    def _index(self) -> Iterator[db.Connection]:
        if self._shared is not None:
            yield self._shared
        else:
            with self.storage.index_connection() as conn:
                yield conn

    # --- what to keep ---------------------------------------------------------------------

    def latest_asset_events(self, run_ids: Sequence[str]) -> set[int]:
        """Index ids of the runs' asset events that no newer event supersedes."""
        kept: set[int] = set()
        e, n = Events.alias("e"), Events.alias("n")
        for kind, newer_kinds in SUPERSEDED_BY.items():
            for partitioned in (True, False):
                same_partition = n.c.partition == e.c.partition if partitioned else n.c.partition.is_(None)
                newer = db.select(n.c.id).where(
                    n.c.asset_key == e.c.asset_key,
                    n.c.dagster_event_type.in_(newer_kinds),
                    same_partition,
                    n.c.id > e.c.id,
                )
                query = db.select(e.c.id).where(
                    e.c.run_id.in_(run_ids),
                    e.c.dagster_event_type == kind,
                    e.c.partition.isnot(None) if partitioned else e.c.partition.is_(None),
                    ~newer.exists(),
                )
                with self._index() as conn:
                    kept.update(row[0] for row in conn.execute(query))
        return kept

    def check_rows(self, run_ids: Sequence[str]) -> tuple[list[int], set[int]]:
        """(ids of the runs' superseded check executions, index ids of the events the latest ones
        hold: their evaluation, or their plan when never evaluated)."""
        c, n = Checks.alias("c"), Checks.alias("n")
        superseded, kept_events = [], set()
        for partitioned in (True, False):
            same_partition = n.c.partition == c.c.partition if partitioned else n.c.partition.is_(None)
            newer = db.select(n.c.id).where(
                n.c.asset_key == c.c.asset_key, n.c.check_name == c.c.check_name, same_partition, n.c.id > c.c.id
            )
            query = db.select(c.c.id, c.c.evaluation_event_storage_id, newer.exists()).where(
                c.c.run_id.in_(run_ids), c.c.partition.isnot(None) if partitioned else c.c.partition.is_(None)
            )
            with self._index() as conn:
                for row_id, event_id, is_superseded in conn.execute(query):
                    if is_superseded:
                        superseded.append(row_id)
                    elif event_id is not None:
                        kept_events.add(event_id)
        return superseded, kept_events

    def events_of(self, run_ids: Sequence[str]) -> dict[str, list[tuple[int, str | None]]]:
        """Run id -> (index id, event type) of its events (on SQLite: those mirrored in the index)."""
        query = db.select(Events.c.run_id, Events.c.id, Events.c.dagster_event_type).where(Events.c.run_id.in_(run_ids))
        out: dict[str, list[tuple[int, str | None]]] = {run_id: [] for run_id in run_ids}
        with self._index() as conn:
            for run_id, event_id, kind in conn.execute(query):
                out[run_id].append((event_id, kind))
        return out

    # --- deleting -------------------------------------------------------------------------

    def _delete_ids(self, table: db.Table, column: db.Column, ids: Sequence[int], *, run_id: str | None = None,
                    counted: bool = True, checks: bool = False) -> None:  # fmt: skip
        """Delete rows by id, at most `batch_size` per statement, each its own transaction."""
        for start in range(0, len(ids), self.batch_size):
            batch = list(ids[start : start + self.batch_size])
            if not self.dry_run:
                connect = self.storage.run_connection(run_id) if run_id else self._index()
                with connect as conn:
                    conn.execute(table.delete().where(column.in_(batch)))
            if counted:
                self.deleted.add(len(batch), checks=checks)

    def delete_events(self, ids: Sequence[int]) -> None:
        """Delete events by index id, with their asset event tags (on SQLite: the index's mirrors;
        `delete_run_shard` deletes the runs' own rows)."""
        self._delete_ids(AssetEventTagsTable, AssetEventTagsTable.c.event_id, ids, counted=False)
        self._delete_ids(Events, Events.c.id, ids, counted=not self.sharded)

    def delete_run_shard(self, run_id: str, kept_index_ids: Iterable[int], keep_types: Iterable[str]) -> None:
        """SQLite: the run's own database; a row stays when it mirrors a kept index row or is of
        `keep_types`."""
        if not self.sharded or not os.path.exists(self.storage.path_for_shard(run_id)):
            return
        keep_types = set(keep_types)
        signature = (Events.c.dagster_event_type, Events.c.asset_key, Events.c.partition, Events.c.timestamp)
        with self.storage.index_connection() as conn:
            kept = {tuple(r) for r in conn.execute(db.select(*signature).where(Events.c.id.in_(list(kept_index_ids))))}
        with self.storage.run_connection(run_id) as conn:
            rows = conn.execute(db.select(Events.c.id, *signature)).fetchall()
        doomed = [r[0] for r in rows if tuple(r[1:]) not in kept and r[1] not in keep_types]
        self._delete_ids(Events, Events.c.id, doomed, run_id=run_id)

    def delete_check_rows(self, ids: Sequence[int]) -> None:
        self._delete_ids(Checks, Checks.c.id, ids, checks=True)

    def delete_run(self, run_id: str) -> None:
        """The run (its events are deleted already, in bounded statements) and its check executions."""
        query = db.select(Checks.c.id).where(Checks.c.run_id == run_id)
        with self._index() as conn:
            rows = [row[0] for row in conn.execute(query)]
        self.delete_check_rows(rows)
        if self.dry_run:
            return
        self.instance.delete_run(run_id)
        if self.sharded:  # delete_run empties the run's database but leaves its file
            path = self.storage.path_for_shard(run_id)
            if os.path.exists(path):
                os.remove(path)

    # --- upkeep ---------------------------------------------------------------------------

    def ensure_check_index(self) -> None:
        """The index that finds a check's newer result for the same partition (idempotent; on
        PostgreSQL built without blocking writes)."""
        concurrently = "CONCURRENTLY " if self.postgres else ""
        with self.storage.index_connection() as conn:
            conn.execute(db.text(
                f"CREATE INDEX {concurrently}IF NOT EXISTS {CHECK_PARTITION_INDEX} "
                "ON asset_check_executions (asset_key, check_name, partition, id)"
            ))  # fmt: skip

    def vacuum(self) -> None:
        """PostgreSQL: make the deleted rows' space reusable now (VACUUM takes no lock that
        blocks reads or writes). SQLite reuses freed pages by itself."""
        if not self.postgres or self.dry_run:
            return
        with self.storage.index_connection() as conn:
            for table in ("event_logs", "asset_event_tags", "asset_check_executions", "runs", "run_tags"):
                conn.execute(db.text(f"VACUUM (ANALYZE) {table}"))
