"""One tenant's work, as its child process does it: load the run's sources raw, normalize,
compute metrics, and report per-partition figures and content versions to the run worker.
No Dagster here: the run worker (`assets/`) turns the reports into Dagster events."""
