"""Dagster wiring: raw (dlt) assets, the normalized records asset, checks and metrics."""
