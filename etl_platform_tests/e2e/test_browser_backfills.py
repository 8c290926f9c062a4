"""What the UI shows after backfills is what happened, in headless Chromium (issue 23's newcomer).

Tenants: `demo` (the repository's sample sources) and `broken`, whose `events` file is missing and
whose `catalog` loads. With `dg dev` on the embedded default:
1. a 3-day backfill of `demo` launched from "Materialize all…" completes and reads Succeeded, the
   asset graph shows no failed partition, and no asset reads Unsynced (sources `demo` lacks included);
   (Dagster's stale status of every asset for the demo partition is FRESH);
2. a backfill over today × {demo, broken} marks Failed only broken's own `events` assets (its
   records are normalized from the catalog that loaded); demo's assets and the sources broken
   lacks stay clean.
Statuses are read where the UI reads them (its GraphQL endpoint) and shown on screenshots.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from etl_platform_tests.support.headless_browser import (
    Screenshots,
    Waits,
    chromium,
    exact,
    free_port,
    process,
    require_chromium,
    starting,
    wait_http,
)
from etl_platform_tests.support.orchestration import csv_tenant

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
UI_WAIT_S, RUN_WAIT_S = 180, 600

pytestmark = [pytest.mark.browser, pytest.mark.daemon, pytest.mark.timeout(1500)]

STATS = """{ assetNodes { assetKey { path } partitionStats { numMaterialized numFailed numMaterializing } } }"""
STALE = """query($p: String) { assetNodes { assetKey { path } staleStatus(partition: $p) } }"""
BACKFILLS = """{ partitionBackfillsOrError(limit: 10) { ... on PartitionBackfills { results { id status
  partitionNames } } } }"""


def _tenants_file(tmp_path: Path) -> Path:
    """demo as the repository configures it (sample paths made absolute) and `broken`."""
    demo = next(t for t in yaml.safe_load((REPO / "tenants.yaml").read_text())["tenants"] if t["id"] == "demo")
    for source in demo["sources"]:
        for field in ("location", "url"):
            if field in source and not str(source[field]).startswith(("http://", "https://", "/")):
                source[field] = str(REPO / source[field])
    broken = csv_tenant("broken", tmp_path / "broken", dt.date.today(), 1)
    broken["sources"][0]["location"] = str(tmp_path / "broken" / "missing.csv")
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [demo, broken]}, sort_keys=False))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        ETL_TENANTS_FILE=str(_tenants_file(tmp_path)),
        ETL_WAREHOUSE_URL=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        ETL_STEP_RETRIES="0",
        ETL_DATA_ROOT=str(tmp_path),  # broken's folder (the demo's samples are always a root)
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _graphql(ui: str, query: str, **variables: str) -> dict:
    answer = httpx.post(f"{ui}/graphql", json={"query": query, "variables": variables}, timeout=60)
    answer.raise_for_status()
    body = answer.json()
    assert "errors" not in body, body
    return body["data"]


def _failed(ui: str) -> dict[str, int]:
    """asset -> failed partitions, as the UI counts them (assets with none left out)."""
    nodes = _graphql(ui, STATS)["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): n["partitionStats"]["numFailed"]
            for n in nodes if n["partitionStats"] and n["partitionStats"]["numFailed"]}


def test_ui_backfills_read_what_happened(tmp_path: Path) -> None:
    require_chromium()
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    env = _env(tmp_path)
    sync = subprocess.run([str(BIN / "etl-platform"), "tenants", "sync"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert sync.returncode == 0 and "broken" in sync.stdout, sync.stdout + sync.stderr
    today = dt.datetime.now(dt.timezone.utc).date()
    first = today - dt.timedelta(days=2)
    ui_port = free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    dev_log = tmp_path / "dg-dev.log"

    with process([str(BIN / "dg"), "dev", "--port", str(ui_port), "--host", "127.0.0.1"], cwd=REPO, env=env,
                 log=dev_log) as dev, chromium() as driver:
        shots = Screenshots(driver, REPO / "etl_platform_tests" / "screenshots" / "backfills")
        page = Waits(driver, UI_WAIT_S)
        click, visible, wait = page.click, page.visible, page.wait

        def launch(dates: str, tenants: list[str]) -> str:
            """Materialize all… over `dates` × `tenants` as a backfill; its id."""
            before = {b["id"] for b in _graphql(ui, BACKFILLS)["partitionBackfillsOrError"]["results"]}
            driver.get(f"{ui}/asset-groups")
            click("//button[contains(normalize-space(), 'Materialize all')]")
            visible(starting("Launch runs to materialize"))
            date_box = visible("//input[starts-with(@placeholder, 'ex: ')]")
            date_box.click()
            date_box.send_keys(Keys.CONTROL, "a")
            date_box.send_keys(dates, Keys.TAB)
            click(exact("Select a partition or create one"))
            for tenant in tenants:
                visible(exact(tenant)).click()
            click(starting("Launch runs to materialize"))  # close the picker
            click("//button[starts-with(normalize-space(), 'Launch') and contains(., 'backfill')]")
            wait.until(EC.invisibility_of_element_located((By.XPATH, starting("Launch runs to materialize"))))
            made = wait.until(lambda d: [b for b in _graphql(ui, BACKFILLS)["partitionBackfillsOrError"]["results"]
                                         if b["id"] not in before])
            return made[0]["id"]

        def finished(backfill: str) -> str:
            """The backfill's final status (waits while it runs)."""
            def done(_):
                found = {b["id"]: b["status"] for b in _graphql(ui, BACKFILLS)["partitionBackfillsOrError"]["results"]}
                return found.get(backfill) not in (None, "REQUESTED", "CANCELING") and found[backfill]
            return WebDriverWait(driver, RUN_WAIT_S, poll_frequency=2).until(done)

        wait_http(f"{ui}/server_info", dev, dev_log)
        with shots.step("asset-lineage"):
            driver.get(f"{ui}/asset-groups")
            visible("//button[contains(normalize-space(), 'Materialize all')]")
            skip = "//button[normalize-space()='Skip']"  # Dagster's "Join the Dagster community" dialog
            try:
                WebDriverWait(driver, 15).until(EC.element_to_be_clickable((By.XPATH, skip))).click()
            except TimeoutException:
                pass

        with shots.step("demo-backfill-completed"):
            backfill = launch(f"[{first}...{today}]", ["demo"])
            status = finished(backfill)
            assert status == "COMPLETED_SUCCESS", f"the backfill reads {status}; dg dev log:\n{dev_log.read_text()[-3000:]}"
            driver.get(f"{ui}/runs/b/{backfill}")
            shown = visible(f"{exact('Status')}/following-sibling::*[1]").text.strip()
            assert shown == "Succeeded", f"the backfill's page reads {shown!r}"

        def statuses_shown(_) -> bool:
            return not driver.find_elements(By.XPATH, "//*[contains(normalize-space(.), 'fetching statuses')]")

        with shots.step("graph-clean"):
            assert _failed(ui) == {}, "a backfill that succeeded left failed partitions"
            stale = {"/".join(n["assetKey"]["path"]): n["staleStatus"]
                     for n in _graphql(ui, STALE, p=f"{today}|demo")["assetNodes"]}
            assert set(stale.values()) == {"FRESH"}, stale
            driver.get(f"{ui}/asset-groups")
            visible(exact("normalized"))  # the graph's group of the records asset
            wait.until(statuses_shown)
            assert not driver.find_elements(By.XPATH, "//*[contains(normalize-space(.), 'Unsynced')]")
            assert not driver.find_elements(By.XPATH, "//*[contains(normalize-space(.), 'ailed')]")

        with shots.step("records-synced"):
            driver.get(f"{ui}/assets/normalized/records")
            visible(exact("records"))
            visible(starting("Latest materialization"))
            assert not driver.find_elements(By.XPATH, "//*[contains(normalize-space(.), 'Unsynced')]")

        with shots.step("range-over-a-failing-tenant"):
            backfill = launch(str(today), ["demo", "broken"])
            status = finished(backfill)
            assert status != "COMPLETED_SUCCESS", "broken's missing file failed nothing"
            failed = _failed(ui)
            assert failed == {
                "raw/events/events_rows": 1,
                "raw/events/events_rejects": 1,
            }, failed  # broken's records are normalized from its catalog, which loaded
            driver.get(f"{ui}/asset-groups")
            visible(exact("normalized"))
            wait.until(statuses_shown)
