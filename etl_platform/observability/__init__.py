"""Operations: alert messages and channels, Prometheus metrics (read API and platform
exporter), structured logs. Nothing here imports the asset layer."""
