"""Secrets out of every text the platform keeps (logs, exceptions, messages, stored rows)."""
