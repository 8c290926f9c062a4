"""Asset jobs: `ingest` (every asset and its partitioned checks), `ingest_<kind>` per source
kind in use, and `tenant_freshness` (the freshness check across tenants)."""

from __future__ import annotations

from dagster import AssetCheckKey, AssetSelection, define_asset_job

from etl_platform.assets.keys import ENGINEERING_KEY, FRESHNESS_CHECK, RECORDS_KEY
from etl_platform.config.registry import Registry
from etl_platform.observability.run_logger import RUN_CONFIG

INGEST_JOB = "ingest"
FRESHNESS_JOB = "tenant_freshness"
FRESHNESS_KEY = AssetCheckKey(RECORDS_KEY, FRESHNESS_CHECK)


def build_jobs(registry: Registry) -> list:
    """Transient failures are retried inside a run, per tenant and source (`assets/ingest.py`),
    and afterwards by the retry sensor, for the failed tenants only."""
    everything = AssetSelection.all() - AssetSelection.checks(FRESHNESS_KEY)
    jobs = [
        define_asset_job(
            INGEST_JOB,
            selection=everything,
            config=RUN_CONFIG,
            description="Load every source of the partitions' tenants and days, normalize into records, "
            "compute metrics, check. One step; each tenant succeeds or fails on its own.",
        ),
        define_asset_job(
            FRESHNESS_JOB,
            selection=AssetSelection.checks(FRESHNESS_KEY),
            config=RUN_CONFIG,
            description="Is every active tenant's newest record younger than its freshness_hours?",
        ),
    ]
    kinds: dict[str, list[str]] = {}
    for source, kind in registry.source_kinds().items():
        kinds.setdefault(kind, []).append(source)
    for kind, sources in sorted(kinds.items()):
        raw = AssetSelection.key_prefixes(*[["raw", s] for s in sources])
        jobs.append(
            define_asset_job(
                f"ingest_{kind}",
                selection=(raw | AssetSelection.assets(RECORDS_KEY, ENGINEERING_KEY))
                - AssetSelection.checks(FRESHNESS_KEY),
                config=RUN_CONFIG,
                description=f"Load the {kind} sources, then normalize into records.",
            )
        )
    return jobs
