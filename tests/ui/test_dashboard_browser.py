"""The dashboard in a real headless Chromium against a real daemon (gunicorn instances, managed
nginx), with an admin token file so that viewer and admin differ. One daemon and one browser for
the module; each test loads the page afresh.

Skipped, with the reason, only when Chromium, its driver or Selenium is missing
(`scripts/setup test` installs all three)."""
from __future__ import annotations

import os
import signal
import urllib.request

import pytest

from support import browser
from support import needs
from support.browser import console_errors, open_page, rows, wait
from support.harness import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "dashboard-test-admin-token"
VIEWER_TOKEN = "dashboard-test-viewer-token"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    token_file = tmp / "tokens"
    token_file.write_text(f"admin:{TOKEN}\n")
    os.chmod(token_file, 0o600)
    viewer_file = tmp / "viewers"
    viewer_file.write_text(f"watcher:{VIEWER_TOKEN}\n")
    os.chmod(viewer_file, 0o600)
    d = Daemon(tmp, {"api": {"token_file": str(token_file), "viewer_token_file": str(viewer_file)},
                     "dashboard": {"sample_interval": 1},
                     "instances": {"count": 2, "min": 1, "max": 5}})
    d.token_file = token_file
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def driver():
    needs.browser()
    drv = browser.start()
    try:
        yield drv
    finally:
        drv.quit()


def settled(d: Daemon, n: int) -> dict:
    """The fleet at n instances, all serving (scaled back first if a failed test left it elsewhere)."""
    if d.fleet()["desired"] != n:
        scale(d, n)
    return d.wait_until(lambda f: f["desired"] == f["ready"] == len(f["instances"]) == n and all(
        i["serving"] and i["workers"] for i in f["instances"]), timeout=60, what=f"{n} instances serving")


def scale(d: Daemon, n: int) -> None:
    r = d.ctl("--token-file", str(d.token_file), "scale", str(n))
    assert r.returncode == 0, r.stdout + r.stderr


def page_matches_fleet(drv, d: Daemon) -> bool:
    f = d.fleet()
    want = [(i["port"], i["pid"], i["state"], i["in_upstream"]) for i in f["instances"]]
    got = [(r["port"], r["pid"], r["state"], r["in_upstream"]) for r in rows(drv)]
    return got == want


def test_the_fleet_table_matches_fleet(daemon, driver):
    fleet = settled(daemon, 2)
    open_page(driver, daemon.api_url)
    wait(lambda: page_matches_fleet(driver, daemon), 20, "the table to match /fleet")
    texts = [r["text"] for r in rows(driver)]
    for inst, text in zip(fleet["instances"], texts):
        assert str(inst["port"]) in text and "running" in text
        assert "of 500 MiB" in text, text  # each worker's RSS against the per-worker limit
    header = driver.find_element("id", "summary").text
    assert "2 of 2 instances ready" in header, header
    assert "Mode managed, running" in driver.find_element("id", "nginx-status").text
    wc = fleet["gunicorn"]["worker_class"]   # the spec's class, as status names it
    assert f"Workers: {fleet['gunicorn']['workers']} x {wc} per instance." in \
        driver.find_element("id", "memory").text
    # every instance runs app.directory (no deploy yet): the release column says so with "-"
    assert driver.find_element("css selector", "th.release").is_displayed()
    assert [i["release"] for i in fleet["instances"]] == [None, None]
    cells = driver.find_elements("css selector", "td.release")
    assert [c.text for c in cells] == ["-", "-"]
    # no autoscaler here: no target series
    assert "autoscaler" not in driver.find_element("id", "legend-count").text


def test_after_ctl_scale_4_the_page_shows_4_instances_without_a_reload(daemon, driver):
    settled(daemon, 2)
    open_page(driver, daemon.api_url)
    driver.execute_script("window.__sameDocument = 'yes';")
    scale(daemon, 4)
    try:
        wait(lambda: len(rows(driver)) == 4 and all(r["state"] == "running" and r["in_upstream"]
                                                    for r in rows(driver)),
             60, "4 running instances on the page")
        assert driver.execute_script("return window.__sameDocument") == "yes", "the page was reloaded"
        wait(lambda: page_matches_fleet(driver, daemon), 20, "the table to match /fleet")
        assert "fleet.scale" in driver.find_element("id", "event-list").text
        assert "4 of 4 instances ready" in driver.find_element("id", "summary").text
    finally:
        scale(daemon, 2)
    wait(lambda: len(rows(driver)) == 2, 60, "back to 2 rows")


OBSERVE_JS = """
window.__seen = [];
const body = document.getElementById('fleet-body');
const note = () => { for (const tr of body.querySelectorAll('tr')) window.__seen.push(
  [Number(tr.dataset.port), tr.dataset.pid, tr.dataset.state, tr.dataset.inUpstream]); };
note();
new MutationObserver(note).observe(body, {subtree: true, attributes: true, childList: true});
"""


def test_a_kill_9_shows_the_instance_leave_and_come_back(daemon, driver):
    fleet = settled(daemon, 2)
    victim = fleet["instances"][0]
    open_page(driver, daemon.api_url)
    wait(lambda: page_matches_fleet(driver, daemon), 20, "the table to match /fleet")
    driver.execute_script(OBSERVE_JS)
    os.kill(victim["pid"], signal.SIGKILL)
    back = wait(lambda: [r for r in rows(driver) if r["port"] == victim["port"] and r["state"] == "running"
                         and r["in_upstream"] and r["pid"] not in (None, victim["pid"])],
                60, "the instance back with a new pid")
    seen = [s for s in driver.execute_script("return window.__seen") if s[0] == victim["port"]]
    left = [s for s in seen if s[3] == "no" or s[2] != "running"]
    # The table shows it out of the upstream unless the browser was too starved to look in the
    # second or so the instance took to come back; the event list shows it leave in any case.
    port = f'"port":{victim["port"]},'
    states = driver.find_elements("css selector", '#event-list li[data-event="instance.state"]')
    gone = [e.text for e in states if port in e.text and '"old":"running"' in e.text]
    assert left or gone, f"the page never showed {victim['port']} leave: table {seen}"
    assert gone, "no instance.state event for the kill on the page"
    assert back[0]["pid"] != victim["pid"]


def test_a_chart_gains_points(daemon, driver):
    settled(daemon, 2)
    open_page(driver, daemon.api_url)
    def chart() -> int:
        return int(driver.find_element("id", "chart-rps").get_attribute("data-points") or 0)
    first = wait(chart, 30, "a first point")
    for _ in range(5):
        urllib.request.urlopen(f"http://127.0.0.1:{daemon.nginx_port}/", timeout=5).read()
    wait(lambda: chart() >= first + 2, 30, "two more points on the request-rate chart")
    label = driver.find_element("id", "chart-rps").get_attribute("aria-label")
    assert "latest values: fleet" in label, label
    # with a managed nginx the requests are those its access log saw (any app)
    assert "Requests as measured by: nginx access log" in driver.find_element("id", "history-note").text
    assert int(driver.find_element("id", "chart-count").get_attribute("data-points")) >= 1


def visible_action_buttons(drv) -> list[str]:
    return drv.execute_script("""return [...document.querySelectorAll('button')]
        .filter(b => b.offsetParent !== null && !b.closest('dialog') && !b.closest('#token-form'))
        .map(b => b.id || b.className);""")


FORCE_JS = """
const done = arguments[arguments.length - 1];
fetch('/fleet/scale', {method: 'POST', headers: {'Content-Type': 'application/json'},
                       body: JSON.stringify({instances: 3})})
  .then(r => r.json().then(j => done([r.status, j.error && j.error.code])))
  .catch(e => done(['failed', String(e)]));
"""


def test_a_viewer_gets_no_action_that_works(daemon, driver):
    settled(daemon, 2)
    open_page(driver, daemon.api_url)
    wait(lambda: len(rows(driver)) == 2, 20, "rows")
    assert driver.execute_script("return document.body.dataset.role") == "viewer"
    assert visible_action_buttons(driver) == []
    assert "Viewer: read only" in driver.find_element("id", "role").text
    try:  # phone width restyles the table's cells: the hidden action cell must stay hidden
        driver.set_window_size(375, 740)
        assert visible_action_buttons(driver) == []
    finally:
        driver.set_window_size(1280, 800)
    # what a viewer could still try from the page's own origin is refused by the API
    assert driver.execute_async_script(FORCE_JS) == [401, "unauthorized"]
    # a wrong token is no better
    open_page(driver, daemon.api_url, token="not-the-token")
    assert driver.execute_script("return document.body.dataset.role") == "viewer"
    assert visible_action_buttons(driver) == []
    # nor a viewer token (api.viewer_token_file), which the page names; its own POST is refused
    open_page(driver, daemon.api_url, token=VIEWER_TOKEN)
    assert driver.execute_script("return document.body.dataset.role") == "viewer"
    assert "Viewer (token watcher)" in driver.find_element("id", "role").text
    assert visible_action_buttons(driver) == []
    forced = FORCE_JS.replace("'Content-Type': 'application/json'",
                              f"'Content-Type': 'application/json', 'Authorization': 'Bearer {VIEWER_TOKEN}'")
    assert driver.execute_async_script(forced) == [401, "unauthorized"]
    assert daemon.fleet()["desired"] == 2


def confirm(drv, expect_text: str) -> None:
    dialog = drv.find_element("id", "confirm")
    wait(lambda: dialog.get_attribute("open") is not None, 10, "the confirmation dialog")
    assert expect_text in drv.find_element("id", "confirm-text").text
    drv.find_element("id", "confirm-ok").click()


def test_an_admin_action_refused_shows_the_apis_error(daemon, driver):
    settled(daemon, 2)
    open_page(driver, daemon.api_url, token=TOKEN)
    assert driver.execute_script("return document.body.dataset.role") == "admin"
    assert {"scale-btn", "restart-all"} <= set(visible_action_buttons(driver))
    n = driver.find_element("id", "scale-n")
    n.clear()
    n.send_keys("9")
    driver.find_element("id", "scale-btn").click()
    confirm(driver, "to 9 instances")
    notice = driver.find_element("id", "notice")
    wait(lambda: "out_of_range" in notice.text, 10, "the refusal on the page")
    assert "1..5" in notice.text and notice.get_attribute("role") == "alert"
    assert daemon.fleet()["desired"] == 2
    # cancelling asks nothing of the API
    driver.find_element("id", "restart-all").click()
    wait(lambda: driver.find_element("id", "confirm").get_attribute("open") is not None, 10, "dialog")
    driver.find_element("id", "confirm-cancel").click()
    assert not [e for e in daemon.events("fleet.restart_requested")]
    # no release deployed yet: the pick says so, and a rollback is refused with the API's reason
    assert {"deploy-btn", "rollback-btn"} <= set(visible_action_buttons(driver))
    pick = driver.find_element("id", "release-pick")
    wait(lambda: "no release deployed yet" in pick.text, 10, "the release list")
    driver.find_element("id", "rollback-btn").click()
    confirm(driver, "Roll the fleet back")
    wait(lambda: "no_rollback_target" in notice.text, 10, "the rollback's refusal on the page")
    assert "nothing to roll back to" in notice.text
    assert daemon.fleet()["instances"][0]["release"] is None


def test_an_admin_restarts_one_instance_from_the_page(daemon, driver):
    fleet = settled(daemon, 2)
    target = fleet["instances"][1]
    open_page(driver, daemon.api_url, token=TOKEN)
    wait(lambda: len(rows(driver)) == 2, 20, "rows")
    driver.find_element("css selector", f'tr[data-port="{target["port"]}"] button.restart-one').click()
    confirm(driver, f"Restart instance {target['port']}")
    wait(lambda: "Restarting" in driver.find_element("id", "notice").text, 10, "accepted")
    wait(lambda: [r for r in rows(driver) if r["port"] == target["port"] and r["state"] == "running"
                  and r["pid"] not in (None, target["pid"])], 60, "a new pid on the page")
    audit = [e for e in daemon.events("api.request") if e["path"].endswith("/restart")]
    assert audit and audit[-1]["actor"] == "admin" and audit[-1]["status"] == 202


def test_keyboard_reaches_every_action_and_a_phone_width_fits(daemon, driver):
    from selenium.webdriver.common.keys import Keys
    settled(daemon, 2)
    open_page(driver, daemon.api_url, token=TOKEN)
    wait(lambda: len(rows(driver)) == 2, 20, "rows")
    reached = set()
    body = driver.find_element("tag name", "body")
    body.send_keys(Keys.TAB)
    for _ in range(40):
        active = driver.switch_to.active_element
        reached.add(active.get_attribute("id") or active.get_attribute("class"))
        active.send_keys(Keys.TAB)
    assert {"scale-n", "scale-btn", "restart-all", "restart-one"} <= reached, reached
    try:
        driver.set_window_size(375, 740)
        fits = "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        wait(lambda: driver.execute_script(fits),
             10, "no sideways scrolling at 375 px")
        # the table is one card per instance, each value labelled
        assert driver.execute_script(
            "return getComputedStyle(document.querySelector('#fleet-body tr')).display") == "block"
        # nothing hidden sideways inside the table's own scroll box either
        wrap = "const w = document.querySelector('.table-wrap'); return [w.scrollWidth, w.clientWidth];"
        scroll, width = driver.execute_script(wrap)
        assert scroll <= width + 1, f"the fleet cards are {scroll} px wide in {width} px"
        assert driver.find_element("css selector", "#fleet-body td.col-workers").text.endswith("%)")
        cell = driver.find_element("css selector", "#fleet-body td.col-port")
        assert "Port" in cell.get_attribute("data-label")
    finally:
        driver.set_window_size(1280, 800)


def test_event_text_is_shown_as_text_never_run(daemon, driver):
    """A refused spec's errors quote its keys: a key that is HTML (with a script in it) reaches
    the page through the event stream and must stay text."""
    settled(daemon, 2)
    open_page(driver, daemon.api_url)
    hostile = '<img src=x onerror="window.__xss=1">'
    original = daemon.spec_path.read_text()
    try:
        daemon.spec_path.write_text(original + f"'{hostile}': 1\n")
        os.kill(daemon.proc.pid, signal.SIGHUP)
        wait(lambda: "spec.refused" in driver.find_element("id", "event-list").text, 30,
             "the refusal on the page")
    finally:
        daemon.spec_path.write_text(original)
    assert "<img src=x" in driver.find_element("id", "event-list").text
    assert driver.execute_script("return window.__xss") is None
    assert driver.execute_script("return document.querySelectorAll('#event-list img').length") == 0


def test_the_page_follows_a_restarted_daemon_without_a_reload(daemon, driver):
    """SIGQUIT leaves the fleet running; the next daemon adopts it and numbers its events from 1
    again. The open page reconnects and shows the new daemon's events, same document."""
    fleet = settled(daemon, 2)
    open_page(driver, daemon.api_url)
    driver.execute_script("window.__sameDocument = 'yes';")
    daemon.proc.send_signal(signal.SIGQUIT)
    daemon.proc.wait(30)
    wait(lambda: driver.execute_script("return document.body.dataset.live") == "no", 30, "the page to notice")
    daemon.start()
    starting = f'"pid":{daemon.proc.pid},'  # the new daemon's daemon.starting names its pid
    wait(lambda: any(starting in e.text for e in driver.find_elements(
        "css selector", '#event-list li[data-event="daemon.starting"]'))
        and driver.execute_script("return document.body.dataset.live") == "yes",
        60, "the new daemon's events")
    assert driver.execute_script("return window.__sameDocument") == "yes"
    pids = sorted(i["pid"] for i in fleet["instances"])
    wait(lambda: sorted(r["pid"] for r in rows(driver)) == pids, 30, "the adopted instances, same pids")


def test_no_script_error_or_content_security_policy_violation_in_the_console(daemon, driver):
    """Runs last: whatever the tests above made the page do logged no script error and nothing
    the page's Content-Security-Policy refused (an inline style or script would be)."""
    settled(daemon, 2)
    open_page(driver, daemon.api_url, token=TOKEN)
    wait(lambda: int(driver.find_element("id", "chart-rps").get_attribute("data-points") or 0) >= 1,
         30, "a chart")
    assert console_errors(driver) == []
