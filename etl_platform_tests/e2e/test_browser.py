"""The Dagster UI and the read API's /docs as a user meets them, in headless Chromium.

On the embedded default (SQLite instance from the repository's dagster.yaml, DuckDB warehouse,
the repository's tenants.yaml) it starts `dg dev` and `etl-platform serve` on free ports, then:
1. opens the global asset lineage and dismisses Dagster's first-visit dialog;
2. "Materialize all…": picks today in the date box and `demo` in the tenant picker of the
   multi-partition dialog, and launches the run;
3. waits on the Runs page until the run of `<today>|demo` shows "Success";
4. on `normalized/records` (RECORDS_ASSET): Partitions tab, the day and the tenant, and the
   partition reads "Materialized"; Checks tab: every check "Succeeded" (none skipped), each one's
   latest execution "Passed", and a partitioned check names the partition `<today>|demo`;
5. the lineage of that asset (the asset graph);
6. /stats names the UI's run "assets (launched from the UI or CLI)";
7. /docs lists every path of /openapi.json, with no network (only 127.0.0.1 resolves).
Every step leaves a screenshot in etl_platform_tests/screenshots/ (NN-step.png; -FAILED on failure).
The test finds things by the text a user reads, not by CSS classes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

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
    xpath_literal,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECORDS_ASSET = "normalized/records"  # the asset whose partition and checks the test reads
DEMO_KEY = "demo-browser-key-0123456789"
UI_WAIT_S, RUN_WAIT_S = 180, 420

pytestmark = [pytest.mark.browser, pytest.mark.daemon, pytest.mark.timeout(1200)]


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        ETL_TENANTS_FILE=str(REPO / "tenants.yaml"),
        ETL_WAREHOUSE_URL=f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        ETL_DEMO_API_KEY=DEMO_KEY,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _partitioned_checks(env: dict[str, str], asset: str) -> dict[str, bool]:
    """Check name -> partitioned, for the checks of `asset`, from the platform's definitions."""
    code = (
        "import json\nfrom etl_platform.definitions import build_definitions\n"
        "graph = build_definitions().resolve_asset_graph()\n"
        f"print(json.dumps({{k.name: graph.get(k).partitions_def is not None for k in graph.asset_check_keys "
        f"if k.asset_key.to_user_string() == {asset!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tab(name: str) -> str:
    """A tab of the asset page (Overview, Partitions, Events, Checks, Lineage)."""
    return f"//*[@role='tab'][normalize-space(.)={xpath_literal(name)}]"


def _value_of(driver, label: str) -> str:
    """The value shown under a label of the check's 'Latest execution' (label and value share a box)."""
    box = driver.find_element("xpath", f"{exact(label)}/..")
    return box.text.split("\n", 1)[1].strip() if "\n" in box.text else ""


def test_materialize_the_demo_partition_in_the_ui_then_read_docs(tmp_path: Path) -> None:
    require_chromium()
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    env = _env(tmp_path)
    sync = subprocess.run([str(BIN / "etl-platform"), "tenants", "sync"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert sync.returncode == 0 and "demo" in sync.stdout, sync.stderr
    partitioned = _partitioned_checks(env, RECORDS_ASSET)
    assert partitioned, f"{RECORDS_ASSET} has no checks"
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    key = f"{today}|demo"
    ui_port, api_port = free_port(), free_port()
    ui, api = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}"
    dev_log, api_log = tmp_path / "dg-dev.log", tmp_path / "serve.log"

    with process([str(BIN / "dg"), "dev", "--port", str(ui_port), "--host", "127.0.0.1"], cwd=REPO, env=env,
                 log=dev_log) as dev, \
            process([str(BIN / "etl-platform"), "serve", "--port", str(api_port)], cwd=tmp_path, env=env,
                    log=api_log) as server, \
            chromium() as driver:
        shots = Screenshots(driver)
        page = Waits(driver, UI_WAIT_S)
        click, visible, wait = page.click, page.visible, page.wait

        wait_http(f"{ui}/server_info", dev, dev_log)
        with shots.step("asset-lineage"):
            driver.get(f"{ui}/asset-groups")
            visible("//button[contains(normalize-space(), 'Materialize all')]")
            skip = "//button[normalize-space()='Skip']"  # Dagster's "Join the Dagster community" dialog
            try:
                WebDriverWait(driver, 15).until(EC.element_to_be_clickable((By.XPATH, skip))).click()
            except TimeoutException:  # it did not show: nothing to dismiss
                pass
            wait.until(EC.invisibility_of_element_located((By.XPATH, skip)))

        with shots.step("materialize-dialog"):
            click("//button[contains(normalize-space(), 'Materialize all')]")
            visible(starting("Launch runs to materialize"))
            date_box = visible("//input[starts-with(@placeholder, 'ex: ')]")  # the date dimension's range box
            date_box.click()
            date_box.send_keys(today, Keys.TAB)
            click(exact("Select a partition or create one"))  # the tenant picker
            visible(exact("demo")).click()
            click(starting("Launch runs to materialize"))  # close the picker
            visible(exact("1 partition"))

        with shots.step("launched"):
            click("//button[starts-with(normalize-space(), 'Launch') and not(contains(., 'Launching'))]")
            wait.until(EC.invisibility_of_element_located(
                (By.XPATH, starting("Launch runs to materialize"))))

        with shots.step("run-succeeded"):
            click(f"{exact('Runs')}/ancestor-or-self::a[1]")
            row = f"//div[contains(normalize-space(.), {xpath_literal('partition: ' + key)})]"

            def finished(d):
                if d.find_elements(By.XPATH, f"{row}[.{exact('Failure')}]"):
                    pytest.fail(f"the run of {key} failed; dg dev log:\n{dev_log.read_text()[-4000:]}")
                return d.find_elements(By.XPATH, f"{row}[.{exact('Success')}]")

            WebDriverWait(driver, RUN_WAIT_S, poll_frequency=1).until(finished)

        with shots.step("partition-materialized"):
            driver.get(f"{ui}/assets/{RECORDS_ASSET}")
            click(_tab("Partitions"))
            click(exact(today))
            visible(exact("demo")).click()
            visible(exact(key))
            visible(exact("Materialized"))

        checks_seen = {}
        with shots.step("checks-passed"):
            click(_tab("Checks"))
            listed = int(visible(starting("Checks (")).text.strip("Checks ()"))
            assert listed == len(partitioned), f"the UI lists {listed} checks, the definitions {len(partitioned)}"
            # every check ran in the step that materialized the partition: the per-partition checks
            # for the partition, the check across tenants (freshness) for the run's tenant
            count = listed
            wait.until(lambda d: len(d.find_elements(By.XPATH, exact("Succeeded"))) == count)
            assert not driver.find_elements(By.XPATH, exact("Skipped"))
            assert not driver.find_elements(By.XPATH, exact("Failed"))
            for n in range(count):
                entry = driver.find_elements(By.XPATH, exact("Succeeded"))[n].find_element(By.XPATH, "..")
                named = entry.find_elements(By.XPATH, ".//*[@title]")
                name = named[0].get_attribute("title") if named else entry.text.split("\n")[0]
                entry.click()

                def detail_shows(d, name=name, entry=entry):  # the check's name outside its list entry
                    return [e for e in d.find_elements(By.XPATH, exact(name)) if e.is_displayed()
                            and not d.execute_script("return arguments[0].contains(arguments[1])", entry, e)]

                wait.until(detail_shows)
                wait.until(lambda d: _value_of(d, "Evaluation result") == "Passed")
                checks_seen[name] = _value_of(driver, "Partition")
            driver.find_elements(By.XPATH, exact("Succeeded"))[0].find_element(By.XPATH, "..").click()  # for the shot
            wait.until(lambda d: _value_of(d, "Evaluation result") == "Passed")
        assert set(checks_seen) == set(partitioned), checks_seen
        for name, shown in checks_seen.items():
            assert not partitioned[name] or shown == key, f"check {name} names partition {shown!r}, not {key}"

        with shots.step("asset-graph"):
            driver.set_window_size(1600, 1400)  # the whole graph, tall as it is
            click(_tab("Lineage"))
            visible(exact("records"))
        driver.set_window_size(1600, 1000)

        wait_http(f"{api}/health", server, api_log, timeout=60)
        stats = httpx.get(f"{api}/stats", headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=30)
        assert stats.status_code == 200, stats.text
        jobs = {s["last_success"]["job"] for s in stats.json()["sources"] if s["last_success"]}
        assert "assets (launched from the UI or CLI)" in jobs, jobs

        with shots.step("api-docs"):
            driver.get(f"{api}/docs")
            visible(starting("etl-platform read API"))  # the title, then the version badges
            paths = httpx.get(f"{api}/openapi.json", timeout=30).json()["paths"]
            for path in paths:
                visible(f"//*[normalize-space(.)={xpath_literal(path)}]")
