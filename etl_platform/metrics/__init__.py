"""Metrics computed from the unified records (pure computations in `engineering`, warehouse I/O in `run`)."""
