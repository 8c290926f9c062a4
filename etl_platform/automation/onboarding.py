"""Tenant onboarding: the tenants file's tenants become `tenant` dynamic partitions.

Tenants removed from the file are reported, never deleted: their partitions and data stay.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import DagsterInstance

from etl_platform.config.registry import Registry
from etl_platform.partitions import tenant_partitions


@dataclass(frozen=True)
class SyncPlan:
    to_add: list[str]
    registered: list[str]  # already partitions and still in the file
    removed_from_file: list[str]  # partitions whose tenant left the file (data kept)

    def summary(self) -> str:
        parts = [f"added {self.to_add}" if self.to_add else "no new tenants"]
        parts.append(f"{len(self.registered)} already registered")
        if self.removed_from_file:
            parts.append(f"not in the tenants file any more (partitions and data kept): {self.removed_from_file}")
        return "; ".join(parts)


def plan_sync(existing: list[str], registry: Registry) -> SyncPlan:
    wanted = registry.tenant_ids
    return SyncPlan(
        to_add=[t for t in wanted if t not in existing],
        registered=[t for t in wanted if t in existing],
        removed_from_file=sorted(t for t in existing if t not in wanted),
    )


def registered_tenants(instance: DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(tenant_partitions.name))


def sync_tenants(instance: DagsterInstance, registry: Registry) -> SyncPlan:
    """Add the file's new tenants as partitions (idempotent) and report the removed ones."""
    plan = plan_sync(registered_tenants(instance), registry)
    if plan.to_add:
        instance.add_dynamic_partitions(tenant_partitions.name, plan.to_add)
    return plan
