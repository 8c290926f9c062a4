"""Tests of the run coordinator and launchers."""
