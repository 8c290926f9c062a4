"""Names a person reads for Dagster's machine names (the CLI and the read API share them)."""

from __future__ import annotations

# Dagster's implicit job: runs launched by selecting assets (UI "Materialize", `dg launch --assets`,
# `dagster asset materialize`) rather than by naming a job. Dagster may suffix it (`__ASSET_JOB_0`).
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
# `dagster.materialize(...)` in a Python process (tests, scripts)
EPHEMERAL_ASSET_JOB = "__ephemeral_asset_job__"


def job_label(name: str | None) -> str:
    """A job name as a person reads it: `__ASSET_JOB` -> 'assets (launched from the UI or CLI)',
    `ingest_csv` -> 'ingest (csv sources)'; other names unchanged."""
    if not name:
        return "-"
    if name.startswith(IMPLICIT_ASSET_JOB):
        return "assets (launched from the UI or CLI)"
    if name == EPHEMERAL_ASSET_JOB:
        return "assets (materialized from Python)"
    if name == "ingest":
        return "ingest (every source)"
    if name.startswith("ingest_"):
        return f"ingest ({name.removeprefix('ingest_')} sources)"
    return name
