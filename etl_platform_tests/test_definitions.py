"""The Dagster definitions load, and every asset, check, job, schedule and sensor resolves."""

from pathlib import Path

from dagster import AssetKey, Definitions

REPO = Path(__file__).resolve().parents[1]


def test_repo_definitions_resolve(monkeypatch, dagster_home, tmp_path):
    monkeypatch.setenv("ETL_TENANTS_FILE", str(REPO / "tenants.yaml"))
    monkeypatch.setenv("ETL_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    from etl_platform.definitions import build_definitions

    defs = build_definitions()
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {
        "raw/support_tickets/support_tickets_tickets",
        "raw/support_tickets/support_tickets_rejects",
        "raw/products/products_products",
        "raw/products/products_rejects",
        "raw/release_notes/release_notes_entries",
        "raw/jsonplaceholder/jsonplaceholder_users",
        "raw/jsonplaceholder/jsonplaceholder_posts",
        "raw/jsonplaceholder/jsonplaceholder_comments",
        "raw/jsonplaceholder/jsonplaceholder_todos",
        "normalized/records",
    } <= keys
    # the node label (the key's last part) is unique and names the source
    labels = [k.rsplit("/", 1)[-1] for k in keys]
    assert len(labels) == len(set(labels))
    graph = repo.asset_graph
    for key in keys - {"normalized/records", "metrics/engineering"}:
        node = graph.get(AssetKey.from_user_string(key))
        assert node.group_name == "raw"
        assert not node.parent_keys, f"{key} has phantom upstream deps"
        assert node.partitions_def is not None
    records = graph.get(AssetKey(["normalized", "records"]))
    assert records.group_name == "normalized"
    assert AssetKey(["raw", "support_tickets", "support_tickets_tickets"]) in records.parent_keys
    metrics = graph.get(AssetKey(["metrics", "engineering"]))
    assert metrics.group_name == "metrics" and metrics.parent_keys == {AssetKey(["normalized", "records"])}
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"ingest", "ingest_csv", "ingest_rss", "ingest_rest_api"} <= jobs
    assert {s.name for s in repo.schedule_defs} == {
        "hourly_ingest", "daily_rebackfill", "tenant_freshness", "purge_history"}  # fmt: skip
    assert {"purge_history", "refresh_partition_status"} <= jobs
    assert {s.name for s in repo.sensor_defs} == {
        "tenant_onboarding", "retry_failed_runs", "mark_dead_runs", "failure_alerts"
    }
    check_names = {k.name for k in graph.asset_check_keys}
    assert {
        "unique_upsert_key",
        "required_columns_not_null",
        "raw_reconciles_with_records_and_rejects",
        "tenant_freshness",
        "schema_drift",
        "unmapped_jira_statuses",
    } <= check_names
    from etl_platform.runs.partitions import tenant_date_partitions

    for name in jobs - {"__ASSET_JOB", "tenant_freshness", "purge_history", "refresh_partition_status"}:
        assert repo.get_job(name).partitions_def == tenant_date_partitions()
    # every asset and partitioned check is one step of one run
    ingest = repo.get_job("ingest")
    assert [n.name for n in ingest.nodes_in_topological_order] == ["tenant_partitions"]
    in_ingest = {c.name for c in ingest.asset_layer.asset_graph.asset_check_keys}
    assert "tenant_freshness" not in in_ingest and "raw_reconciles_with_records_and_rejects" in in_ingest


def test_module_level_defs_object(monkeypatch, dagster_home, tmp_path):
    monkeypatch.setenv("ETL_TENANTS_FILE", str(REPO / "tenants.yaml"))
    monkeypatch.setenv("ETL_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'w.duckdb'}")
    import importlib

    import etl_platform.definitions as module

    module = importlib.reload(module)
    assert isinstance(module.defs, Definitions)


def test_runs_execute_in_one_process(monkeypatch, dagster_home):
    """One step per run: no process per step to start, on either warehouse."""
    monkeypatch.setenv("ETL_TENANTS_FILE", str(REPO / "tenants.yaml"))
    monkeypatch.setenv("ETL_WAREHOUSE_URL", "postgresql://postgres@127.0.0.1:5432/unused")
    from etl_platform.definitions import build_definitions

    defs = build_definitions()
    assert defs.executor is not None and defs.executor.name == "in_process"
