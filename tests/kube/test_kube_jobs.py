"""`processes:` jobs as CronJobs NAME-TYPE: schedule (and the `every` periods cron can say),
concurrencyPolicy, the run's deadline, no retry, catch_up, the history kept, the official
schemas; what cron cannot say is refused naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_kube import assert_valid, validate  # noqa: F401 (validate is a fixture)
from ultrascaled.export import kube
from ultrascaled.spec import parse_spec

JOBS = """name: Shop
processes:
  nightly_clean:
    kind: job
    command: [python, manage.py, clearsessions]
    schedule: "30 3 * * *"
    timeout: 600
    stop_signal: INT
    history: 50
    env: {SWEEP: all}
  sweep:
    kind: job
    command: [python, -m, sweep]
    every: 5m
    concurrency: replace
    catch_up: true
  worker:
    command: [rq, worker]
"""


def export(text: str = JOBS) -> kube.Export:
    return kube.export(parse_spec(text, base_dir=Path("/srv/shop"), cpu_count=2))


def cronjobs(ex: kube.Export) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in ex.manifests if m["kind"] == "CronJob"}


def test_each_job_is_a_cronjob_with_its_schedule_policy_deadline_and_history():
    crons = cronjobs(export())
    assert sorted(crons) == ["shop-nightly-clean", "shop-sweep"]
    nightly = crons["shop-nightly-clean"]["spec"]
    assert (nightly["schedule"], nightly["concurrencyPolicy"], nightly["startingDeadlineSeconds"]) == \
        ("30 3 * * *", "Forbid", 60)
    assert nightly["successfulJobsHistoryLimit"] == nightly["failedJobsHistoryLimit"] == 10
    job = nightly["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (0, 600)
    pod = job["template"]["spec"]
    c = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and c["command"] == ["python", "manage.py", "clearsessions"]
    assert c["env"] == [{"name": "SWEEP", "value": "all"}]
    assert "kill -s INT 1" in c["lifecycle"]["preStop"]["exec"]["command"][-1]
    sweep = crons["shop-sweep"]["spec"]
    assert (sweep["schedule"], sweep["concurrencyPolicy"]) == ("*/5 * * * *", "Replace")
    assert "startingDeadlineSeconds" not in sweep                     # catch_up: one missed run starts
    assert "activeDeadlineSeconds" not in sweep["jobTemplate"]["spec"]  # no timeout
    assert [m["kind"] for m in export().manifests].count("Deployment") == 2   # the web one and the worker


@pytest.mark.parametrize("every, cron", [("1m", "* * * * *"), ("60", "* * * * *"), ("15m", "*/15 * * * *"),
                                         ("1h", "0 * * * *"), ("6h", "0 */6 * * *"), ("1d", "0 0 * * *")])
def test_an_every_period_cron_can_say_becomes_its_schedule(every, cron):
    spec = parse_spec(f"processes:\n  j: {{kind: job, command: [x], every: '{every}'}}\n")
    assert kube.manifests.cron_of(spec, "j") == cron


@pytest.mark.parametrize("every", ["30s", "7m", "90m", "5h", "2d"])
def test_an_every_period_cron_cannot_say_is_refused_naming_the_key(every):
    with pytest.raises(kube.ExportError, match=rf"processes\.j\.every {every}: a CronJob runs on cron's schedule"):
        export(f"processes:\n  j: {{kind: job, command: [x], every: '{every}'}}\n")


def test_a_job_and_a_worker_that_become_one_name_are_refused():
    with pytest.raises(kube.ExportError, match="processes.a-b and processes.a_b: both become 'ultrascale-a-b'"):
        export("processes:\n  a_b: {kind: job, command: [x], every: 1m}\n  a-b: {command: [y]}\n")


def test_a_cronjob_name_leaves_room_for_its_jobs_names():
    long = "j" * 40                                                  # ultrascale-<40> is 51: fits 52
    assert cronjobs(export(f"processes:\n  {long}: {{kind: job, command: [x], every: 1m}}\n"))
    with pytest.raises(kube.ExportError, match="cannot name a Kubernetes CronJob"):
        export(f"processes:\n  {long}jj: {{kind: job, command: [x], every: 1m}}\n")


def test_every_object_with_jobs_validates_against_the_two_newest_schemas(validate):
    ex = export()
    assert_valid(ex, validate)


def test_the_export_says_where_the_time_zone_and_the_retries_differ():
    said = "\n".join(export().warnings)
    assert "CronJobs shop-nightly-clean, shop-sweep" in said and "spec.timeZone" in said
