"""Configuration: environment settings and the tenants file."""

from etl_platform.config.settings import Settings, get_settings
from etl_platform.config.tenants import (
    Registry,
    SourceConfig,
    TenantConfig,
    TenantsFileError,
    load_registry,
)

__all__ = [
    "Registry",
    "Settings",
    "SourceConfig",
    "TenantConfig",
    "TenantsFileError",
    "get_settings",
    "load_registry",
]
