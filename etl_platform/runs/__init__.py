"""Run bookkeeping below assets and automation: run tags, the tenant x date partitions, what a run
covers, failure classification, the worker executing a run, facts of finished runs, queries over
Dagster's run storage, and job names as a person reads them."""
