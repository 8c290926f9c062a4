"""`etl-platform`: tenants (sync, list), demo, runs, purge, serve, exporter."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from etl_platform.config.settings import listen_address
from etl_platform.observability import logs
from etl_platform.observability import warnings as known_warnings


class NoInstanceError(RuntimeError):
    """No Dagster instance is configured where the command runs."""


def ensure_dagster_home() -> Path:
    """The Dagster instance folder: DAGSTER_HOME (an existing folder), else the nearest folder
    from here upwards holding a `dagster.yaml` (the project folder: the instance `dagster dev`
    uses there with DAGSTER_HOME=$PWD). Never creates one: raises NoInstanceError instead."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        if not Path(home).is_dir():
            raise NoInstanceError(f"DAGSTER_HOME={home} is not a folder; create it (with a dagster.yaml) or unset it")
        return Path(home)
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "dagster.yaml").is_file():
            os.environ["DAGSTER_HOME"] = str(folder)
            print(f"DAGSTER_HOME is not set; using {folder} (it has a dagster.yaml)", file=sys.stderr)
            return folder
    raise NoInstanceError(
        f"no Dagster instance here: DAGSTER_HOME is not set and there is no dagster.yaml in {here} or above it. "
        "Run from the project folder, or `export DAGSTER_HOME=<folder with dagster.yaml>` "
        "(the project's own: `export DAGSTER_HOME=$PWD` in the project folder)"
    )


def _instance():
    """The instance of DAGSTER_HOME (main() has checked that there is one)."""
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from dagster import DagsterInstance

    return DagsterInstance.get()


def cmd_tenants_sync(args: argparse.Namespace) -> int:
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry

    registry = load_registry(args.file)
    with _instance() as instance:
        plan = sync_tenants(instance, registry)
    print(plan.summary())
    return 0


def cmd_tenants_list(args: argparse.Namespace) -> int:
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
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


# per-partition materialization figures the demo reports, in the words it prints them with
RUN_FIGURES = (
    ("dagster/row_count", "rows loaded"),
    ("raw_rows", "raw rows read"),
    ("records_written", "records written"),
    ("rejects", "rejected"),
)


def _run_figures(result) -> dict[str, dict[str, int]]:
    """Per asset: the run's figures summed over its partitions (from the materialization metadata)."""
    out: dict[str, dict[str, int]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        figures = out.setdefault(materialization.asset_key.to_user_string(), {})
        if getattr(materialization.metadata.get("applies"), "value", True) is False:
            figures["not applicable"] = 1
            continue
        words = RUN_FIGURES if materialization.asset_key.path[0] == "raw" else RUN_FIGURES[1:]
        for key, _words in words:
            value = getattr(materialization.metadata.get(key), "value", None)
            if isinstance(value, int):
                figures[key] = figures.get(key, 0) + value
    return out


def _print_run(result, key: str) -> None:
    print(f"\nloaded by this run ({key}):")
    figures = _run_figures(result)
    width = max((len(name) for name in figures), default=0)
    for name, values in sorted(figures.items()):
        text = ", ".join(f"{values[k]} {words}" for k, words in RUN_FIGURES if k in values) or "materialized"
        if "not applicable" in values:
            text = "not applicable (the tenant has no such source)"
        print(f"  {name:<{width}}  {text}")
    applicable = [c for c in result.get_asset_check_evaluations()
                  if getattr(c.metadata.get("applies"), "value", True) is not False]
    failed = sorted(f"{c.asset_key.to_user_string()}:{c.check_name}" for c in applicable if not c.passed)
    names = f" ({', '.join(failed)})" if failed else ""
    print(f"checks: {len(applicable) - len(failed)} passed, {len(failed)} failed{names}")


def _print_warehouse(warehouse, dataset: str) -> None:
    print(f"\nin the warehouse now, all loaded days: {warehouse} (schema {dataset})")
    with warehouse.connect() as conn:
        tables = conn.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [dataset]
        )
        for (table,) in tables:
            if table.startswith("_dlt"):
                continue
            count = conn.query(f'SELECT count(*) FROM "{dataset}"."{table}"')[0][0]
            print(f"  {dataset}.{table:<32} {count:>8} rows")


def cmd_demo(args: argparse.Namespace) -> int:
    """Register tenants, materialize one partition of the demo tenant, print what it loaded and what is stored."""
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from dagster import DagsterInstance

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry
    from etl_platform.config.settings import get_settings
    from etl_platform.definitions import build_definitions
    from etl_platform.runs.partitions import partition_key
    from etl_platform.runs.tags import TENANT_TAG, TRIGGER_TAG
    from etl_platform.warehouse import warehouse_for

    os.environ.setdefault("RUNTIME__LOG_LEVEL", args.log_level)  # dlt's own logger
    registry = load_registry()
    tenant = registry.tenant(args.tenant)
    day = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.timezone.utc).date()
    with DagsterInstance.get() as instance:
        print(f"tenants: {sync_tenants(instance, registry).summary()}")
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
    _print_run(result, str(key))
    _print_warehouse(warehouse_for(tenant), tenant.dataset)
    settings = get_settings()
    home = os.environ["DAGSTER_HOME"]
    print(f"\nDagster instance: {home}. The UI: `dg dev` in the project folder, with DAGSTER_HOME={home}.")
    print(f"settings: start date {settings.start_date}, timezone {settings.timezone}")
    return 0 if result.success else 1


def cmd_warehouse_migrate(args: argparse.Namespace) -> int:
    """Move the tenants' schemas of a single-file DuckDB warehouse into a file per tenant."""
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.warehouse import get_warehouse
    from etl_platform.warehouse.migrate import migrate_to_tenant_files

    warehouse = get_warehouse()
    if warehouse.kind != "duckdb":
        print(f"{warehouse} is PostgreSQL: nothing to migrate")
        return 0
    moves = migrate_to_tenant_files(warehouse)
    for move in moves:
        if move.skipped:
            print(f"tenant {move.tenant_id}: skipped: {move.skipped}")
        else:
            print(f"tenant {move.tenant_id}: {len(move.tables)} tables, {sum(move.tables.values()):,} rows moved")
    print(f"{len([m for m in moves if not m.skipped])} tenants moved out of {warehouse.duckdb_path}")
    return 1 if any(m.skipped for m in moves) else 0


def cmd_runs(args: argparse.Namespace) -> int:
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.runs.history import recent_runs
    from etl_platform.runs.labels import job_label

    with _instance() as instance:
        runs = recent_runs(instance, tenant=args.tenant, limit=args.limit)
    header = ("RUN", "STATUS", "JOB", "TENANT", "PARTITION", "TRIGGER", "ATTEMPT", "DURATION", "STARTED")
    rows = [header]
    for run in runs:
        rows.append(
            (
                run.run_id[:8],
                run.status,
                job_label(run.job_name),
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
        print("  ".join(col.ljust(widths[i]) for i, col in enumerate(row)).rstrip())
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.automation.retention import check_retention, parse_age, purge_history
    from etl_platform.config.settings import get_settings

    try:
        older_than = parse_age(args.older_than) if args.older_than else None
        check_retention(older_than or parse_age(str(get_settings().retention_days)), "--older-than")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with _instance() as instance:
        report = purge_history(
            instance, older_than, dry_run=args.dry_run, batch_size=args.batch_size,
            log=(lambda text: print(text, flush=True)) if args.verbose else None,
        )  # fmt: skip
    if args.dry_run:
        for run_id in report.deleted_run_ids[: args.list]:
            print(f"would delete run {run_id}")
        for run_id in report.thinned_run_ids[: args.list]:
            print(f"would purge the events of run {run_id}")
        shown = min(args.list, len(report.deleted_run_ids)) + min(args.list, len(report.thinned_run_ids))
        hidden = len(report.deleted_run_ids) + len(report.thinned_run_ids) - shown
        if hidden > 0:
            print(f"... and {hidden} more runs (--list N shows more)")
    print(report.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.api import serve

    serve(host=args.host, port=args.port)
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.observability.exporter import serve

    ensure_dagster_home()
    serve(host=args.host, port=args.port)
    return 0


def _listen_arguments(parser: argparse.ArgumentParser, prefix: str, port: int) -> None:
    """--host and --port, defaulting to <prefix>_HOST and <prefix>_PORT, else 127.0.0.1 and `port`."""
    host, port_default = listen_address(prefix, port)
    parser.add_argument(
        "--host", default=host,
        help=f"address to listen on (default: {prefix}_HOST, else 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=int, default=port_default,
        help=f"port to listen on (default: {prefix}_PORT, else {port})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etl-platform",
        description="Multi-tenant ETL on Dagster and dlt. Every command works on the Dagster instance of "
        "DAGSTER_HOME, else of the nearest folder (from here upwards) with a dagster.yaml.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tenants = sub.add_parser("tenants", help="the tenant registry: sync, list", description="The tenant registry.")
    actions = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (
        ("sync", cmd_tenants_sync, "add the tenants file's tenants as partitions (idempotent)"),
        ("list", cmd_tenants_list, "show tenants, sources and registration state"),
    ):
        p = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--file", help="tenants file (default: ETL_TENANTS_FILE, else ./tenants.yaml)")
        p.set_defaults(func=func)

    text = "register the tenants, materialize one partition of the demo tenant, print what it loaded"
    demo = sub.add_parser("demo", help=text, description=text[0].upper() + text[1:] + ".")
    demo.add_argument("--tenant", default="demo", help="tenant to materialize (default: demo)")
    demo.add_argument("--date", help="partition day, YYYY-MM-DD (default: today, UTC)")
    demo.add_argument("--log-level", default="WARNING", help="Dagster console log level (default: WARNING)")
    demo.set_defaults(func=cmd_demo)

    text = "recent runs from Dagster's run storage, newest first"
    runs = sub.add_parser("runs", help=text, description=text[0].upper() + text[1:] + ".")
    runs.add_argument("--tenant", help="only runs of this tenant id (default: every tenant)")
    runs.add_argument("--limit", type=int, default=20, help="how many runs to show (default: 20)")
    runs.set_defaults(func=cmd_runs)

    text = "delete runs and events older than a retention (default ETL_RETENTION_DAYS, 30 days)"
    purge = sub.add_parser(
        "purge", help=text,
        description=text[0].upper() + text[1:] + ". Keeps each partition's latest materialization and check "
        "result, the run records /stats reads (90 days) and each tenant's last success and failure; deletes in "
        "statements of at most --batch-size rows.",
    )  # fmt: skip
    purge.add_argument("--older-than", help="age: 30d, 12h, or a number of days (default: ETL_RETENTION_DAYS)")
    purge.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    purge.add_argument("--list", type=int, default=20, help="with --dry-run: runs to name (default: 20)")
    purge.add_argument("--batch-size", type=int, help="rows per delete statement (default: ETL_RETENTION_BATCH_SIZE)")
    purge.add_argument("--verbose", action="store_true", help="print progress")
    purge.set_defaults(func=cmd_purge)

    warehouse = sub.add_parser("warehouse", help="the DuckDB warehouse: migrate", description="The warehouse.")
    actions = warehouse.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = "move a single-file DuckDB warehouse's tenants into a file per tenant (tenants/<id>.duckdb; once)"
    migrate = actions.add_parser("migrate", help=text, description=text[0].upper() + text[1:] + ".")
    migrate.set_defaults(func=cmd_warehouse_migrate)

    text = "start the read API (/data, /stats, /health; docs at /docs)"
    serve = sub.add_parser("serve", help=text, description=text[0].upper() + text[1:] + ".")
    _listen_arguments(serve, "ETL_API", 8000)
    serve.set_defaults(func=cmd_serve)

    text = "serve the platform's Prometheus metrics by tenant and source (/metrics)"
    exporter = sub.add_parser("exporter", help=text, description=text[0].upper() + text[1:] + ".")
    _listen_arguments(exporter, "ETL_EXPORTER", 9108)
    exporter.set_defaults(func=cmd_exporter)
    return parser


def main(argv: list[str] | None = None) -> int:
    known_warnings.install()
    logs.configure_from_env()  # ETL_LOG_FORMAT=json: JSON lines from the platform's loggers
    args = build_parser().parse_args(argv)
    # imported per command: `etl-platform --help` starts without loading Dagster or the platform
    from etl_platform.config.models import TenantsFileError

    try:
        ensure_dagster_home()  # before anything reads or writes under it (the tenants file cache too)
        return args.func(args)
    except (TenantsFileError, NoInstanceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
