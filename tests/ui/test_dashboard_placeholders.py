"""The places the dashboard keeps for parts being built elsewhere, shown in Chromium against the
API served the daemon's way on a fake fleet (no gunicorn needed): a `release` column once
`/fleet` carries one, and the autoscaler's target in the instance chart once the history has one."""
from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from support import browser
from support import needs
from support.browser import open_page, rows, wait

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_helpers import FakeFleet, free_port, no_change, settings  # noqa: E402

from ultrascaled.surface.app import build_app  # noqa: E402
from ultrascaled.surface.api.server import ApiServer  # noqa: E402
from ultrascaled.core.traffic import TrafficWindow  # noqa: E402
from ultrascaled.observe.history import History  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class Released(FakeFleet):
    def snapshot(self) -> dict:
        snap = super().snapshot()
        for i, inst in enumerate(snap["instances"]):
            inst.update(release=f"r{41 + i}", workers=[], in_upstream=True, uptime=5.0, last_exit=None)
        snap.update(release="r42", min=1, max=8, upstream={"servers": [], "ok": True, "error": ""})
        return snap


class WithJob(Released):
    """The fake fleet with a job `nightly` beside its worker type, one run going."""
    def processes(self) -> dict:
        job = {"kind": "job", "desired": 0, "ready": 1, "min": 0, "max": 0, "schedule": "30 3 * * *",
               "every": None, "concurrency": "forbid", "next_run": 1_700_086_200.0,
               "instances": [{"index": 4, "run": 4, "pid": 4200, "state": "running", "uptime": 2.0, "restarts": 0}]}
        return {**super().processes(), "nightly": job}

    def job_runs(self, name: str) -> list:
        failed = {**super().job_runs(name)[0], "run": 2, "outcome": "failed", "returncode": 3}
        return [{"run": 4, "outcome": "running", "started": 1_700_000_300.0, "duration": 2.0, "why": "operator"},
                *super().job_runs(name), failed]


class Quiet:
    def window(self, port, seconds):
        return TrafficWindow(seconds=seconds)


@pytest.fixture
def served(tmp_path):
    needs.browser()
    fleet = WithJob(tmp_path)
    targets = iter([3, 3, 4, 4, 5] + [5] * 100)
    import time
    walls = iter([time.time() - 5 + n for n in range(5)])  # a second apart, as the loop would take them
    history = History(Quiet(), fleet.snapshot, seconds=60, interval=1, target=lambda: next(targets),
                      wall=lambda: next(walls))
    for _ in range(5):
        history.record()
    s = settings(port=free_port())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ApiServer(build_app(fleet, s, no_change, history=history), s)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    drv = browser.start()
    try:
        yield drv, f"http://127.0.0.1:{s.port}"
    finally:
        drv.quit()
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_release_column_and_the_autoscaler_target_appear_when_present(served):
    drv, url = served
    open_page(drv, url)
    wait(lambda: len(rows(drv)) == 2, 20, "two rows")
    assert drv.find_element("css selector", "th.release").is_displayed()
    cells = [c.text for c in drv.find_elements("css selector", "#fleet-body td.col-release")]
    assert cells == ["r41", "r42"], cells
    legend = drv.find_element("id", "legend-count").text
    assert "autoscaler target: 5.00" in legend, legend
    assert drv.find_elements("css selector", '#chart-count path[data-name="autoscaler target"]')


def test_the_process_types_beside_the_web_fleet_are_shown_with_their_processes(served):
    drv, url = served
    open_page(drv, url)
    wait(lambda: drv.find_elements("css selector", '#processes-body tr[data-type="worker"]'), 20, "the worker row")
    assert drv.find_element("id", "processes").is_displayed()
    row = drv.find_element("css selector", '#processes-body tr[data-type="worker"]')
    cells = [c.text for c in row.find_elements("css selector", "td")]
    assert cells[:3] == ["worker", "worker", "1 / 1"], cells
    assert "pid 4000 running" in cells[3] and "restarts 0" in cells[3], cells
    # the web type is the fleet table's, not a row here
    assert not drv.find_elements("css selector", '#processes-body tr[data-type="web"]')


def test_a_job_shows_its_schedule_next_run_and_recent_runs(served):
    drv, url = served
    open_page(drv, url)
    wait(lambda: drv.find_elements("css selector", '#processes-body tr[data-type="nightly"] .run'), 20, "the job's runs")
    row = drv.find_element("css selector", '#processes-body tr[data-type="nightly"]')
    cells = [c.text for c in row.find_elements("css selector", "td")]
    assert cells[:3] == ["nightly", "job", "1 running"], cells
    assert "schedule 30 3 * * *, forbid; next " in cells[3], cells
    runs = [r.get_attribute("data-outcome") for r in row.find_elements("css selector", ".run")]
    assert runs == ["running", "succeeded", "failed"], runs
    assert "run 2 failed" in cells[3] and "exit 3" in cells[3] and "operator" in cells[3], cells
