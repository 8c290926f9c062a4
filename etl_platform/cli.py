"""`etl-platform`: tenants (sync, list), demo, runs, serve, exporter."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or the project folder (where dagster.yaml is) when unset: the same
    instance `dagster dev` uses when started there with DAGSTER_HOME=$PWD."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        here = Path.cwd()
        for folder in (here, *here.parents):
            if (folder / "dagster.yaml").exists() and (folder / "workspace.yaml").exists():
                home = str(folder)
                break
        else:
            home = str(here)
        os.environ["DAGSTER_HOME"] = home
        print(f"DAGSTER_HOME is not set; using {home}", file=sys.stderr)
    Path(home).mkdir(parents=True, exist_ok=True)
    return Path(home)


def _instance():
    from dagster import DagsterInstance

    ensure_dagster_home()
    return DagsterInstance.get()


def cmd_tenants_sync(args: argparse.Namespace) -> int:
    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry

    registry = load_registry(args.file)
    with _instance() as instance:
        plan = sync_tenants(instance, registry)
    print(plan.summary())
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    from etl_platform.automation.onboarding import registered_tenants
    from etl_platform.config.registry import load_registry

    registry = load_registry(args.file)
    with _instance() as instance:
        registered = set(registered_tenants(instance))
    rows = [("TENANT", "STATE", "REGISTERED", "SOURCES")]
    for tenant in registry.tenants:
        sources = ", ".join(f"{s.name} ({s.kind})" for s in tenant.sources) or "-"
        rows.append(
            (tenant.id, "paused" if tenant.paused else "active", "yes" if tenant.id in registered else "no", sources)
        )
    for tenant_id in sorted(registered - set(registry.tenant_ids)):
        rows.append((tenant_id, "removed from file", "yes", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(col.ljust(widths[i]) if i < 3 else col for i, col in enumerate(row)))
    print(f"\ntenants file: {registry.path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Register tenants, materialize today's partition of the demo tenant, print row counts."""
    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.automation.tags import TENANT_TAG, TRIGGER_TAG
    from etl_platform.config.registry import load_registry
    from etl_platform.config.settings import get_settings
    from etl_platform.partitions import partition_key
    from etl_platform.warehouse import get_warehouse

    ensure_dagster_home()
    os.environ.setdefault("RUNTIME__LOG_LEVEL", args.log_level)  # dlt's own logger
    registry = load_registry()
    tenant = registry.tenant(args.tenant)
    day = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.timezone.utc).date()
    from dagster import DagsterInstance

    from etl_platform.definitions import build_definitions

    with DagsterInstance.get() as instance:
        print(sync_tenants(instance, registry).summary())
        job = build_definitions().resolve_job_def("ingest")
        key = partition_key(tenant.id, day)
        print(f"materializing {key} (tenant {tenant.id}, {day}) ...")
        result = job.execute_in_process(
            partition_key=str(key),
            instance=instance,
            tags={TENANT_TAG: tenant.id, TRIGGER_TAG: "manual"},
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
            raise_on_error=False,
        )
        print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    warehouse = get_warehouse()
    print(f"\nwarehouse: {warehouse} (schema {tenant.dataset})")
    with warehouse.connect() as conn:
        tables = conn.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [tenant.dataset]
        )
        for (table,) in tables:
            if table.startswith("_dlt"):
                continue
            count = conn.query(f'SELECT count(*) FROM "{tenant.dataset}"."{table}"')[0][0]
            print(f"  {tenant.dataset}.{table:<32} {count:>8} rows")
    print(f"\nDagster instance: {os.environ['DAGSTER_HOME']} — run `dagster dev` there to see the assets.")
    print(f"settings: start date {get_settings().start_date}, timezone {get_settings().timezone}")
    return 0 if result.success else 1


def cmd_runs(args: argparse.Namespace) -> int:
    from etl_platform.runs import recent_runs

    with _instance() as instance:
        runs = recent_runs(instance, tenant=args.tenant, limit=args.limit)
    header = ("RUN", "STATUS", "TENANT", "PARTITION", "TRIGGER", "ATTEMPT", "DURATION", "STARTED")
    rows = [header]
    for run in runs:
        rows.append(
            (
                run.run_id[:8],
                run.status,
                run.tenant or "-",
                run.partition or "-",
                run.trigger or "-",
                str(run.attempt or 1),
                f"{run.duration_s:.1f}s" if run.duration_s is not None else "-",
                run.started_at.strftime("%Y-%m-%d %H:%M:%S") if run.started_at else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(col.ljust(widths[i]) for i, col in enumerate(row)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from etl_platform.api import serve

    ensure_dagster_home()
    serve(host=args.host, port=args.port)
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    from etl_platform.observability.exporter import serve

    ensure_dagster_home()
    serve(host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etl-platform", description="Multi-tenant ETL on Dagster and dlt.")
    sub = parser.add_subparsers(dest="command", required=True)

    tenants = sub.add_parser("tenants", help="tenant registry").add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("sync", cmd_tenants_sync, "add the tenants file's tenants as partitions (idempotent)"),
        ("list", cmd_tenants_list, "show tenants, sources and registration state"),
    ):
        p = tenants.add_parser(name, help=text)
        p.add_argument("--file", help="tenants file (default: ETL_TENANTS_FILE or ./tenants.yaml)")
        p.set_defaults(func=func)

    demo = sub.add_parser("demo", help="register tenants and materialize today's demo partition")
    demo.add_argument("--tenant", default="demo")
    demo.add_argument("--date", help="YYYY-MM-DD (default: today, UTC)")
    demo.add_argument("--log-level", default="WARNING", help="Dagster console log level (default WARNING)")
    demo.set_defaults(func=cmd_demo)

    runs = sub.add_parser("runs", help="recent runs from Dagster's run storage")
    runs.add_argument("--tenant")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)

    serve = sub.add_parser("serve", help="start the read API (/data, /stats, /health)")
    serve.add_argument("--host", default=os.environ.get("ETL_API_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("ETL_API_PORT", "8000")))
    serve.set_defaults(func=cmd_serve)

    exporter = sub.add_parser("exporter", help="serve the platform's Prometheus metrics (/metrics)")
    exporter.add_argument("--host", default=os.environ.get("ETL_EXPORTER_HOST", "127.0.0.1"))
    exporter.add_argument("--port", type=int, default=int(os.environ.get("ETL_EXPORTER_PORT", "9108")))
    exporter.set_defaults(func=cmd_exporter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from etl_platform.config.models import TenantsFileError

    try:
        return args.func(args)
    except TenantsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
