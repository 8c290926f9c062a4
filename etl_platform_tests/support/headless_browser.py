"""Headless Chromium for the browser test: Debian's `chromium` and `chromium-driver` through
Selenium, no network but this machine, screenshots of every step under screenshots/."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"  # git-ignored
# without the background-networking flags Chromium's own connections are refused on a closed network;
# the resolver rule makes "no network" explicit: only 127.0.0.1 resolves
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,1000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


def xpath_literal(value: str) -> str:
    """An XPath string literal."""
    return f'"{value}"' if '"' not in value else "concat('" + value.replace("'", "', \"'\", '") + "')"


def exact(text: str) -> str:
    """The innermost elements whose whole text is `text` (React splits texts into several nodes)."""
    return f"//*[normalize-space(.)={xpath_literal(text)}][not(*[normalize-space(.)={xpath_literal(text)}])]"


def starting(text: str) -> str:
    """The innermost elements whose text starts with `text`."""
    starts = f"starts-with(normalize-space(.), {xpath_literal(text)})"
    return f"//*[{starts}][not(*[{starts}])]"


def require_chromium() -> None:
    """Skip outside CI when Chromium is not installed (.ci/run installs it); fail in CI."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing: .ci/run installs chromium and chromium-driver")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install -y chromium chromium-driver)")


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium with a new profile, closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Waits:
    """Waiting lookups on a page: `click(xpath)` once the element is clickable, `visible(xpath)` the
    first displayed match (the UI keeps hidden copies of some texts); both wait up to `timeout`."""

    def __init__(self, driver, timeout: float) -> None:
        from selenium.webdriver.support.ui import WebDriverWait  # selenium: the browser tests' only

        self.wait = WebDriverWait(driver, timeout)

    def click(self, xpath: str) -> None:
        from selenium.webdriver.common.by import By  # selenium: the browser tests' only
        from selenium.webdriver.support import expected_conditions as EC  # noqa: N812 - selenium's name

        self.wait.until(EC.element_to_be_clickable((By.XPATH, xpath))).click()

    def visible(self, xpath: str):  # noqa: ANN201 - a selenium WebElement
        from selenium.webdriver.common.by import By  # selenium: the browser tests' only

        return self.wait.until(
            lambda d: next((e for e in d.find_elements(By.XPATH, xpath) if e.is_displayed()), False))


class Screenshots:
    """`with shots.step("name"):` saves NN-name.png after the step, NN-name-FAILED.png if it fails."""

    def __init__(self, driver, folder: Path = SCREENSHOTS) -> None:
        self.driver, self.folder, self.count = driver, folder, 0
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.count += 1
        stem = f"{self.count:02d}-{name}"
        try:
            yield
        except BaseException:
            self.driver.save_screenshot(str(self.folder / f"{stem}-FAILED.png"))
            raise
        self.driver.save_screenshot(str(self.folder / f"{stem}.png"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def process(args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server process in its own process group, stopped with its children: SIGINT (Ctrl-C, which
    `dg dev` shuts down on cleanly), then SIGKILL after 30 s."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
            except ProcessLookupError:
                pass


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until `url` answers 200 (or fail when the process exits first, with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
