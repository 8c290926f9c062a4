"""Tests of the assets through Dagster."""
