"""Which tenants a run covers, and the names of the secrets its worker may hold: theirs only.

Shared by the run launchers that start a run's worker somewhere else (a Docker container,
`run_launcher.py`; a Kubernetes Job, `k8s_launcher.py`): the worker gets the secrets of the tenants
the run covers (their sources' `*_env` and `warehouse_url_env`), never another tenant's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from etl_platform.config.registry import load_registry
from etl_platform.isolation.environment import tenant_secret_names
from etl_platform.runs.tags import TENANT_TAG, TENANTS_TAG, _registered, tenants_of_tags

log = logging.getLogger(__name__)


def run_tenants(tags: Mapping[str, str], registered: Iterable[str] | None = None) -> list[str]:
    """The tenants a run covers: `etl/tenant`, the chunk's `etl/tenants`, and its partition (key
    `date|tenant`, or a range over the `tenant` partitions in `registered` order)."""
    named = [tags.get(TENANT_TAG, "")] + (tags.get(TENANTS_TAG) or "").split(",")
    out = dict.fromkeys(t.strip() for t in named if t.strip())
    out.update(dict.fromkeys(tenants_of_tags(tags, registered)))
    return list(out)


def registered_order(instance: Any, tags: Mapping[str, str]) -> list[str] | None:
    """The `tenant` partitions in order, which a partition range needs to name its tenants; None
    when the run's tags name them (`etl/tenant`, `etl/tenants`) or there is no instance."""
    if instance is None or tags.get(TENANT_TAG) or tags.get(TENANTS_TAG):
        return None
    return _registered(instance)


def registry_tenants() -> list[Any]:
    """The tenants of the tenants file; none (with a warning) when it cannot be read: a broken
    file must not stop health checks and terminations, and then no run gets a tenant's secret."""
    try:
        return list(load_registry().tenants)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("run workers get no tenant secrets: cannot read the tenants file: %s", exc)
        return []


def covered_secret_names(tenants: Iterable[Any], tags: Mapping[str, str],
                         registered: Iterable[str] | None = None) -> dict[str, set[str]]:
    """For each tenant of `tenants` the run covers, the names of its secrets; no other tenant."""
    covered = set(run_tenants(tags, registered))
    return {t.id: tenant_secret_names(t) for t in tenants if t.id in covered}
