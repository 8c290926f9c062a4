"""What makes the platform run itself: jobs, schedules, sensors, tenant onboarding, the run queue."""

import os

# A single-run backfill of N partitions writes N "materialization planned" events when the run
# is created and N materializations per asset when it ends. With a batch size Dagster writes
# them in batches (one INSERT per batch on PostgreSQL; SQLite still writes one by one): a
# 900-partition run starts and finishes minutes sooner. Set here because every Dagster process
# of the platform imports this package (the code server and run workers through the
# definitions, the daemon and webserver through the run coordinator); the environment wins.
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
