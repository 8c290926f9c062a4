"""Asset jobs over raw + normalized assets, partitioned by tenant × date."""

from __future__ import annotations

from dagster import AssetSelection, Backoff, Jitter, RetryPolicy, define_asset_job

from etl_platform.config.tenants import Registry
from etl_platform.partitions import tenant_date_partitions

INGEST_JOB = "ingest"
# Transient errors are first retried inside the run, per step, with backoff (dlt already
# retries each HTTP request). Permanent failures (Failure(allow_retries=False)) are not.
STEP_RETRY_POLICY = RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)


def build_jobs(registry: Registry) -> list:
    """`ingest` (every source, then records) and `ingest_<kind>` per source kind in use."""
    jobs = [
        define_asset_job(
            INGEST_JOB,
            selection=AssetSelection.all(),
            partitions_def=tenant_date_partitions,
            op_retry_policy=STEP_RETRY_POLICY,
            description="Load every source of the partition's tenant and day, then normalize into records.",
        )
    ]
    kinds: dict[str, list[str]] = {}
    for source, kind in registry.source_kinds().items():
        kinds.setdefault(kind, []).append(source)
    for kind, sources in sorted(kinds.items()):
        selection = AssetSelection.groups("raw") & AssetSelection.key_prefixes(*[["raw", s] for s in sources])
        jobs.append(
            define_asset_job(
                f"ingest_{kind}",
                selection=selection | AssetSelection.keys(["normalized", "records"]),
                partitions_def=tenant_date_partitions,
                op_retry_policy=STEP_RETRY_POLICY,
                description=f"Load the {kind} sources, then normalize into records.",
            )
        )
    return jobs
