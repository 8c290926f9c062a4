"""Configuration: environment settings, the tenants file's models and its registry."""

from etl_platform.config.models import SourceConfig, TenantConfig, TenantsFileError
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import Settings, get_settings

__all__ = [
    "Registry",
    "Settings",
    "SourceConfig",
    "TenantConfig",
    "TenantsFileError",
    "get_settings",
    "load_registry",
]
