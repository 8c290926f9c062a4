"""One entry point from a source's config to its dlt source, whatever its kind."""

from __future__ import annotations

from dlt.sources import DltSource

from etl_platform.config.models import SourceConfig
from etl_platform.config.names import REJECTS_TABLE, raw_table
from etl_platform.config.registry import Registry
from etl_platform.sources.lineage import RunContext
from etl_platform.sources.redact import install_trace_redaction


def build_source(config: SourceConfig, registry: Registry, ctx: RunContext, *, for_run: bool = True) -> DltSource:
    """The dlt source for `config`; `for_run=False` builds a template (no secrets, no I/O)
    for asset definitions. Data tables are named `<source>_<resource>` so that two sources
    of a tenant never share a table; ingestion rejects share the tenant's `rejects` table.
    Every dlt trace of this process is redacted from then on (`redact.install_trace_redaction`)."""
    install_trace_redaction()
    source = _build(config, registry, ctx, for_run=for_run)
    for name, resource in source.resources.items():
        if name != REJECTS_TABLE:
            resource.apply_hints(table_name=raw_table(config.name, name))
    return source


def _build(config: SourceConfig, registry: Registry, ctx: RunContext, *, for_run: bool) -> DltSource:
    # imports by kind: a process loads the modules of the source kinds it builds only
    if config.kind == "rest_api":
        from etl_platform.sources.rest_api import build_rest_api_source, template_rest_api_source  # by kind

        return (build_rest_api_source if for_run else template_rest_api_source)(config, ctx)
    if config.kind == "csv":
        from etl_platform.sources.csv.source import build_csv_source  # by kind

        return build_csv_source(config, registry.resolve(config.location), ctx)
    if config.kind == "rss":
        from etl_platform.sources.feeds import build_feed_source  # by kind

        return build_feed_source(config, registry.resolve(config.url), ctx)
    if config.kind == "jira":
        from etl_platform.sources.jira import build_jira_source  # by kind

        return build_jira_source(config, ctx)
    if config.kind == "github":
        from etl_platform.sources.github import build_github_source  # by kind

        return build_github_source(config, ctx)
    raise ValueError(f"source {config.name!r}: unknown kind {config.kind!r}")


def apply_load_hints(source: DltSource, config: SourceConfig, warehouse_kind: str) -> None:
    """How a run loads the source's tables, where a kind differs from the raw contract (today CSV
    only: `csv/source.py`'s `apply_load_hints`)."""
    if config.kind == "csv":
        from etl_platform.sources.csv.source import apply_load_hints as csv_load_hints  # by kind

        csv_load_hints(source, config, warehouse_kind)
