"""Tests of engineering metrics."""
