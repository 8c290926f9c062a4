"""The README's promises: `etl-platform demo` and the dagster CLI on the shipped demo tenant."""

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ETL_TENANTS_FILE": str(REPO / "tenants.yaml"),
        "ETL_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}",
        "ETL_DUCKDB_TENANT_FILES": "true",  # the embedded default a user gets: a file per tenant
    }


def test_demo_command(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run(
        [str(BIN / "etl-platform"), "demo"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SUCCESS" in proc.stdout and "tenant_demo.records" in proc.stdout
    # the demo says what its numbers count: this run's loads, then the warehouse over all loaded days
    assert "loaded by this run" in proc.stdout and "15 records written" in proc.stdout
    assert "in the warehouse now, all loaded days" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr  # no Dagster warnings the platform triggers knowingly
    # the README's sample output is what the command prints, but for its placeholders
    readme = (REPO / "README.md").read_text()
    sample = readme.split("run's id and the instance folder as placeholders:\n\n```\n", 1)[1].split("\n```", 1)[0]
    day = re.search(r"materializing (\S+)\|demo", proc.stdout).group(1)
    run_id = re.search(r"^run (\S+): SUCCESS$", proc.stdout, re.M).group(1)
    printed = proc.stdout.replace(day, "<today>").replace(run_id, "<run id>")
    printed = printed.replace(env["DAGSTER_HOME"], "<DAGSTER_HOME>")
    warehouse = re.compile(r"(all loaded days: )\S+")
    assert warehouse.sub(r"\1URL", printed).strip() == warehouse.sub(r"\1URL", sample).strip()
    assert f"{tmp_path / 'tenants' / 'demo.duckdb'} (schema tenant_demo)" in proc.stdout
    conn = duckdb.connect(str(tmp_path / "tenants" / "demo.duckdb"), read_only=True)
    counts = dict(conn.execute("SELECT source, count(*) FROM tenant_demo.records GROUP BY 1").fetchall())
    assert counts == {"support_tickets": 8, "products": 4, "release_notes": 3}
    inactive = conn.execute("SELECT source_id FROM tenant_demo.records WHERE NOT is_active ORDER BY 1").fetchall()
    assert inactive == [("P-900",), ("T-1008",)]
    # the run is in Dagster's run storage, where `dagster dev` shows it
    runs = subprocess.run([str(BIN / "etl-platform"), "runs"], env=env, capture_output=True, text=True, check=True)
    assert "SUCCESS" in runs.stdout and "demo" in runs.stdout


def test_dagster_cli_materializes_the_demo_partition_after_sync(tmp_path):
    env = _env(tmp_path)
    subprocess.run([str(BIN / "etl-platform"), "tenants", "sync"], env=env, check=True, capture_output=True)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    proc = subprocess.run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "etl_platform.definitions",
            "--select",
            "*",
            "--partition",
            f"{today}|demo",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    conn = duckdb.connect(str(tmp_path / "tenants" / "demo.duckdb"), read_only=True)
    assert conn.execute("SELECT count(*) FROM tenant_demo.records").fetchall() == [(15,)]
