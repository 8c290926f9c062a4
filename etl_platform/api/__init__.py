"""The read API: /data, /stats, /admin/stats, /health over the warehouse and Dagster's storage."""

from etl_platform.api.app import create_app, serve

__all__ = ["create_app", "serve"]
