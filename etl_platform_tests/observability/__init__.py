"""Tests of logs, metrics and alerts plumbing."""
