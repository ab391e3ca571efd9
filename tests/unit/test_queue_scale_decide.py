"""A worker type's autoscaling on its queue's depth (core/queue_scale.py over core/autoscale.py's
decision): the HPA's External-metric formula ceil(depth / target), its tolerance against the
current count, a burst up to max through the scale-up policies, back down only after the
scale-down window; and the spec's `processes.NAME.autoscale` with its errors and masking."""
from __future__ import annotations

from pathlib import Path

import pytest

from ultrascaled.core import autoscale as core
from ultrascaled.core import queue_scale as qs
from ultrascaled.spec import SpecError, parse_spec, shown_spec
from ultrascaled.spec.queue import list_name, mask_url, scrub

TYPE = """processes:
  worker:
    command: [python, -m, rq.cli, worker]
    count: 1
    min: 0
    max: {max}
    autoscale:
{autoscale}"""
DEFAULT = """      queue: {redis: "redis://:s3cret@127.0.0.1:6379/0", rq: default}
      target: 50
"""


def spec(autoscale: str = DEFAULT, max: int = 8):
    return parse_spec(TYPE.format(autoscale=autoscale, max=max), base_dir=Path("/srv/fleet"))


def policy(autoscale: str = DEFAULT, max: int = 8):
    t = spec(autoscale, max).processes["worker"]
    return t.autoscale, t.autoscale.bounds(t)


def refused(autoscale: str, max: int = 8) -> str:
    with pytest.raises(SpecError) as e:
        spec(autoscale, max)
    return str(e.value)


# ---- the decision --------------------------------------------------------------------------

@pytest.mark.parametrize("current,depth,expected,why", [
    (1, 50, 1, "on target"),
    (2, 108, 2, "108 / (50 x 2) = 1.08: within the 10 % tolerance"),
    (2, 92, 2, "0.92: within it, below"),
    (2, 250, 5, "ceil(250 / 50): the total decides, not the running count"),
    (1, 120, 3, "ceil(2.4)"),
    (0, 1, 1, "one item starts the first process of a type at 0"),
    (0, 0, 0, "nothing queued, nothing running: steady at 0"),
    (1, 5000, 5, "100 x the target wants 100: the Pods policy (+4 per 15 s) allows 5 now"),
])
def test_first_decision_is_ceil_of_depth_over_target(current, depth, expected, why):
    a, bounds = policy()
    d, _ = qs.decide(core.State(), depth, current, current, a, bounds, now=0.0)
    assert d.desired == expected, (why, d.reason)


def test_the_reason_names_the_depth_the_target_and_the_step():
    a, bounds = policy()
    d, _ = qs.decide(core.State(), 250, 1, 1, a, bounds, now=0.0)
    assert d.action == "scale_up" and d.reason.startswith("queue_depth 250 vs target 50"), d.reason
    assert d.to_dict()["signals"]["queue_depth"]["ratio"] == 5.0


def test_a_burst_climbs_to_max_by_the_rate_policies_and_no_further():
    """500 queued at target 50 wants 10; max 8. The Pods policy adds at most 4 per 15 s and the
    Percent one doubles per 15 s (Max of the two): 1 -> 5 at once, 8 within the next period."""
    a, bounds = policy(max=8)
    state, current, seen = core.State(), 1, []
    for t in range(0, 40, 5):
        d, state = qs.decide(state, 500, current, current, a, bounds, now=float(t))
        current = d.desired
        seen.append(current)
    assert seen[0] == 5 and max(seen) == 8 and seen[-1] == 8, seen
    assert seen.index(8) <= 4, seen    # by the next 15 s period
    d, state = qs.decide(state, 500, 8, 8, a, bounds, now=45.0)
    assert d.action == "hold" and "bounded to 8" in d.reason, d.reason


def test_a_drained_queue_steps_down_only_after_the_scale_down_window():
    a, bounds = policy(DEFAULT + "      behavior: {scale_down: {stabilization_window_seconds: 60}}\n")
    state = core.State()
    d, state = qs.decide(state, 400, 1, 1, a, bounds, now=0.0)
    d, state = qs.decide(state, 400, 5, 5, a, bounds, now=15.1)
    current = d.desired
    assert current == 8
    downs = []
    for t in range(20, 120, 5):   # drained at t=20
        d, state = qs.decide(state, 0, current, current, a, bounds, now=float(t))
        if d.desired != current:
            downs.append((t, d.desired))
        current = d.desired
    first = downs[0][0]
    assert first > 15.1 + 60 - 5, downs      # the window still held the 8 of t=15.1
    assert current == 0, downs               # min 0: all the way down once it passed
    assert "stabilized" not in d.reason


def test_a_dip_shorter_than_the_window_changes_nothing():
    a, bounds = policy()   # the HPA's 300 s
    state = core.State()
    d, state = qs.decide(state, 200, 4, 4, a, bounds, now=0.0)
    for t in (10.0, 60.0, 200.0):
        d, state = qs.decide(state, 0, 4, 4, a, bounds, now=t)
        assert d.action == "hold" and d.desired == 4, d.reason
        assert "stabilized to 4" in d.reason


def test_an_unreadable_queue_holds_the_count_even_above_min():
    a, bounds = policy()
    d, _ = qs.decide(core.State(), None, 3, 3, a, bounds, now=0.0)
    assert d.action == "hold" and d.desired == 3 and "queue_depth missing" in d.reason


def test_processes_still_starting_hold_a_step_down():
    a, bounds = policy(DEFAULT + "      behavior: {scale_down: {stabilization_window_seconds: 0}}\n")
    d, _ = qs.decide(core.State(), 0, 1, 3, a, bounds, now=0.0)   # 3 wanted, 1 running
    assert d.action == "hold" and "not ready yet" in d.reason, d.reason


def test_a_manual_scale_pauses_until_resumed():
    state, note = qs.manual_scale(core.State(), True, 0.0, "worker", 3)
    assert note and "autoscale resume worker" in note
    a, bounds = policy()
    d, _ = qs.decide(state, 5000, 3, 3, a, bounds, now=100.0)
    assert d.action == "hold" and d.reason.startswith("paused until resumed (manual scale to 3)")
    assert qs.manual_scale(state, True, 1.0, "worker", 4) == (state, None)   # paused already
    d, _ = qs.decide(core.resume(state), 5000, 3, 3, a, bounds, now=100.0)
    assert d.action == "scale_up"


def test_the_web_targets_are_unchanged_by_the_queue_signal():
    web = parse_spec("autoscale: {enabled: true}\n", base_dir=Path("/srv")).autoscale
    assert core.targets_of(web) == {"cpu_utilization": 70.0}
    assert core.targets_of(qs.policy_of(policy()[0])) == {"queue_depth": 50.0}


# ---- the spec ------------------------------------------------------------------------------

def test_the_shorthands_name_rq_and_celery_lists():
    assert list_name(spec().processes["worker"].autoscale.queue) == "rq:queue:default"
    celery = spec('      queue: {redis: "redis://h:6379/0", celery: celery}\n')
    assert list_name(celery.processes["worker"].autoscale.queue) == "celery"
    raw = spec('      queue: {redis: "redis://h:6379/0", list: "jobs:high"}\n')
    assert list_name(raw.processes["worker"].autoscale.queue) == "jobs:high"


def test_min_and_max_default_to_the_types():
    a, bounds = policy(max=6)
    assert bounds == (0, 6) and a.interval == 5.0 and a.target == 50.0


@pytest.mark.parametrize("autoscale,key,words", [
    ("      target: 10\n", "processes.worker.autoscale.queue.redis", "is required"),
    ('      queue: {redis: "redis://h/0"}\n', "processes.worker.autoscale.queue", "exactly one of"),
    ('      queue: {redis: "redis://h/0", rq: a, celery: b}\n', "processes.worker.autoscale.queue",
     "got rq and celery"),
    ('      queue: {redis: "http://h/0", rq: a}\n', "processes.worker.autoscale.queue.redis",
     "redis://, rediss:// or unix://"),
    ('      queue: {redis: "redis://h/0", rq: a}\n      max: 12\n', "processes.worker.autoscale.max",
     "within processes.worker.min..max (0..8)"),
    ('      queue: {redis: "redis://h/0", rq: a}\n      min: 4\n      max: 2\n',
     "processes.worker.autoscale.min", "got 4..2"),
    ('      queue: {redis: "redis://h/0", rq: a}\n      target: 0\n', "processes.worker.autoscale.target",
     "must be"),
    ('      queue: {redis: "redis://h/0", rq: a}\n      interval: 0.1\n',
     "processes.worker.autoscale.interval", "must be"),
    ('      queue: {redis: "redis://h/0", rq: a}\n      targt: 5\n', "processes.worker.autoscale.targt",
     "unknown key"),
])
def test_errors_name_the_key(autoscale, key, words):
    text = refused(autoscale)
    assert f"{key} (line" in text and words in text, text


def test_a_type_without_room_to_scale_is_refused_naming_its_max():
    with pytest.raises(SpecError) as e:
        parse_spec("processes:\n  worker:\n    command: [x]\n    count: 2\n    autoscale:\n"
                   "      queue: {redis: 'redis://h/0', rq: a}\n      min: 2\n", base_dir=Path("/srv"))
    assert "processes.worker.max (line 2): leaves nothing to scale" in str(e.value)   # the type's line: max unwritten
    assert "defaults to its count" in str(e.value)


def test_a_bad_url_is_refused_without_its_password():
    text = refused('      queue: {redis: "redis://:hunter22@h:port/0", rq: a}\n')
    assert "processes.worker.autoscale.queue.redis" in text and "hunter22" not in text
    assert ":***@" in text


def test_a_job_cannot_autoscale():
    with pytest.raises(SpecError) as e:
        parse_spec("processes:\n  nightly:\n    kind: job\n    every: 1h\n    command: [x]\n"
                   "    autoscale: {queue: {redis: 'redis://h/0', rq: a}}\n", base_dir=Path("/srv"))
    assert "processes.nightly.autoscale (line 6): not a key of a job" in str(e.value)


def test_redis_py_missing_refuses_the_spec(monkeypatch):
    from ultrascaled.spec import queue
    monkeypatch.setattr(queue, "redis_py_missing", lambda: True)
    text = refused(DEFAULT)
    assert "processes.worker.autoscale.queue.redis" in text and "pip install 'redis>=5'" in text


@pytest.mark.parametrize("url,shown", [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://default:s3cret@h:6379/0", "redis://default:***@h:6379/0"),
    ("rediss://s3cret@h:6380", "rediss://***@h:6380"),
    ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
    ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_the_url_is_shown_without_its_password(url, shown):
    assert mask_url(url) == shown


def test_check_output_and_error_texts_hide_the_password():
    shown = shown_spec(spec())
    assert shown["processes"]["worker"]["autoscale"]["queue"]["redis"] == "redis://:***@127.0.0.1:6379/0"
    url = "redis://:s3cret@h:6379/0"
    assert "s3cret" not in scrub(f"AuthenticationError at {url}: s3cret rejected", url)
