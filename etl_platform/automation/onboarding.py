"""Tenant onboarding: the tenants file's tenants become `tenant` dynamic partitions.

Tenants removed from the file are reported, never deleted: their partitions and data stay.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import DagsterInstance

from etl_platform.config.registry import Registry
from etl_platform.runs.partitions import tenant_partitions


@dataclass(frozen=True)
class SyncPlan:
    to_add: list[str]
    registered: list[str]  # already partitions and still in the file
    removed_from_file: list[str]  # partitions whose tenant left the file (data kept)

    def summary(self) -> str:
        parts = [f"added {len(self.to_add)}: {_names(self.to_add)}" if self.to_add else "no new tenants"]
        parts.append(f"{len(self.registered)} already registered")
        if self.removed_from_file:
            parts.append(
                f"not in the tenants file any more (partitions and data kept): {_names(self.removed_from_file)}"
            )
        return "; ".join(parts)


def plan_sync(existing: list[str], registry: Registry) -> SyncPlan:
    """Set operations: linear in the number of tenants."""
    wanted, have = registry.tenant_ids, set(existing)
    in_file = set(wanted)
    return SyncPlan(
        to_add=[t for t in wanted if t not in have],
        registered=[t for t in wanted if t in have],
        removed_from_file=sorted(t for t in existing if t not in in_file),
    )


def _names(ids: list[str], limit: int = 20) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def registered_tenants(instance: DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(tenant_partitions.name))


def sync_tenants(instance: DagsterInstance, registry: Registry) -> SyncPlan:
    """Add the file's new tenants as partitions (idempotent) and report the removed ones."""
    plan = plan_sync(registered_tenants(instance), registry)
    if plan.to_add:
        instance.add_dynamic_partitions(tenant_partitions.name, plan.to_add)
    return plan
