"""Tests of normalization into records."""
