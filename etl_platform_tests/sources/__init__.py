"""Tests of the dlt sources."""
