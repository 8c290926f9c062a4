"""Tests of run bookkeeping."""
