"""Tests of secret redaction."""
