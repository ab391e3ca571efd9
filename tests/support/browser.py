"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven by Selenium, for the
dashboard's browser tests and scripts/screenshots. The driver and browser are the Debian ones,
named by path: Selenium Manager is never asked to download anything."""
from __future__ import annotations

import shutil

from support.waiting import wait_for as wait

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "chromedriver")


def _which(names) -> str | None:
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why a browser cannot be started here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (scripts/setup test installs it)"
    if not _which(CHROMIUM):
        return "Debian's chromium is not installed (scripts/setup test installs it with apt-get)"
    if not _which(DRIVER):
        return "Debian's chromium-driver is not installed (scripts/setup test installs it with apt-get)"
    return None


def start(width: int = 1280, height: int = 800):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = _which(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=_which(DRIVER)))
    driver.set_window_size(width, height)
    driver.set_script_timeout(20)
    return driver


def open_page(driver, api_url: str, token: str | None = None, timeout: float = 30):
    """Load /ui fresh (no token left from an earlier test), with `token` if given, and wait
    until the page has read the fleet once."""
    driver.get(api_url + "/ui")
    driver.execute_script("sessionStorage.clear();")
    if token:
        driver.execute_script("sessionStorage.setItem('ultrascale.token', arguments[0]);", token)
    driver.get(api_url + "/ui")
    wait(lambda: driver.execute_script("return document.body.dataset.ready === 'yes'"), timeout, "page ready")


ROWS_JS = """
return [...document.querySelectorAll('#fleet-body tr')].map(tr => ({
  port: Number(tr.dataset.port), pid: tr.dataset.pid ? Number(tr.dataset.pid) : null,
  state: tr.dataset.state, in_upstream: tr.dataset.inUpstream === 'yes',
  text: tr.innerText}));
"""


def rows(driver) -> list[dict]:
    return driver.execute_script(ROWS_JS)


def console_errors(driver) -> list[str]:
    """Console errors since the last call (script errors, CSP violations), less the network
    failures the tests cause on purpose (refused requests, a stopped daemon)."""
    out = []
    for entry in driver.get_log("browser"):
        msg = entry.get("message", "")
        if entry.get("level") != "SEVERE" or "Failed to load resource" in msg or "net::ERR_" in msg:
            continue
        out.append(msg)
    return out
