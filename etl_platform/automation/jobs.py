"""Asset jobs over raw + normalized assets, partitioned by tenant × date."""

from __future__ import annotations

from dagster import AssetSelection, Backoff, Jitter, RetryPolicy, define_asset_job

from etl_platform.config.registry import Registry
from etl_platform.config.settings import get_settings
from etl_platform.partitions import tenant_date_partitions

INGEST_JOB = "ingest"


def step_retry_policy() -> RetryPolicy:
    """Transient errors are first retried inside the run, per step, with exponential backoff
    (dlt already retries each HTTP request): ETL_STEP_RETRIES retries (default 2), the first
    after ETL_STEP_RETRY_DELAY_SECONDS (default 5), doubling. Permanent failures
    (Failure(allow_retries=False): bad config, auth, schema contract) are never retried."""
    settings = get_settings()
    return RetryPolicy(
        max_retries=settings.step_retries,
        delay=settings.step_retry_delay_s,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def build_jobs(registry: Registry) -> list:
    """`ingest` (every source, then records) and `ingest_<kind>` per source kind in use."""
    policy = step_retry_policy()
    jobs = [
        define_asset_job(
            INGEST_JOB,
            selection=AssetSelection.all(),
            partitions_def=tenant_date_partitions,
            op_retry_policy=policy,
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
                op_retry_policy=policy,
                description=f"Load the {kind} sources, then normalize into records.",
            )
        )
    return jobs
