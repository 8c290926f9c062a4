"""Tests of schedules, sensors, retries, alerts."""
