"""Tests of the tenants file and settings."""
