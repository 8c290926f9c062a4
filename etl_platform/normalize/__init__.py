"""Mapping raw rows of every source kind into the unified `records` table."""
