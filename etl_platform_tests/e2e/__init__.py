"""Tests of the whole platform end to end."""
