"""Run tags the platform sets (runs are the record of every job, in Dagster's run storage)."""

TENANT_TAG = "etl/tenant"
SOURCE_TAG = "etl/source"
TRIGGER_TAG = "etl/trigger"  # schedule | retry | backfill | manual | sensor
ATTEMPT_TAG = "etl/attempt"  # 1 for the first run, 2.. for retries
PARENT_RUN_TAG = "etl/parent_run_id"
ROOT_RUN_TAG = "etl/root_run_id"
RETRY_STATE_TAG = "etl/retry"  # on a failed run: retried | gave_up:<why> | skipped:<why>
