"""The autoscale section: off by default, HPA-named keys with the HPA's defaults, every bad value
named with its path."""
from pathlib import Path

import pytest

from ultrascaled.spec import SpecError, parse_spec


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, base_dir=Path("/srv/fleet"), cpu_count=2)
    return info.value.errors


def test_autoscale_is_off_by_default_with_the_hpa_behavior_defaults():
    a = parse_spec("{}", base_dir=Path("/srv/fleet"), cpu_count=2).autoscale
    assert a.enabled is False
    assert a.tolerance == 0.1
    up, down = a.behavior.scale_up, a.behavior.scale_down
    # autoscaling/v2 defaults: up at once, 4 pods or 100 % per 15 s (the larger);
    # down over a 300 s window, 100 % per 15 s.
    assert (up.stabilization_window_seconds, up.select_policy, up.pods_value, up.pods_period_seconds,
            up.percent_value, up.percent_period_seconds) == (0, "Max", 4, 15, 100, 15)
    assert (down.stabilization_window_seconds, down.select_policy, down.pods_value,
            down.percent_value, down.percent_period_seconds) == (300, "Max", None, 100, 15)


def test_replica_bounds_default_to_the_instance_bounds():
    s = parse_spec("instances: {min: 2, max: 6, count: 3}\nautoscale: {enabled: true}",
                   base_dir=Path("/srv/fleet"), cpu_count=2)
    assert s.autoscale.bounds(s.instances) == (2, 6)
    s = parse_spec("instances: {min: 2, max: 6, count: 3}\n"
                   "autoscale: {enabled: true, min_replicas: 3, max_replicas: 5}",
                   base_dir=Path("/srv/fleet"), cpu_count=2)
    assert s.autoscale.bounds(s.instances) == (3, 5)


@pytest.mark.parametrize("text,expected", [
    ("autoscale:\n  enabled: 1\n", "autoscale.enabled (line 2): must be true or false, got 1"),
    ("autoscale:\n  min_replicas: 0\n",
     "autoscale.min_replicas (line 2): must be within instances.min..max (1..8), got 0"),
    ("autoscale:\n  max_replicas: 9\n",
     "autoscale.max_replicas (line 2): must be within instances.min..max (1..8), got 9"),
    ("autoscale:\n  min_replicas: 5\n  max_replicas: 3\n",
     "autoscale.min_replicas (line 2): the autoscaler's min (5) exceeds its max (3)"),
    ("autoscale:\n  enabled: true\n  target:\n    cpu_utilization: null\n",
     "autoscale.target (line 3): autoscale.enabled needs at least one target"),
    ("instances: {min: 0}\nautoscale:\n  enabled: true\n",
     "autoscale.min_replicas: an enabled autoscaler keeps at least 1 instance"),
    ("autoscale:\n  tolerance: 1.5\n", "autoscale.tolerance (line 2): must be 0..1, got 1.5"),
    ("autoscale:\n  target:\n    cpu_utilization: 0\n",
     "autoscale.target.cpu_utilization (line 3): must be 1..100, got 0"),
    ("autoscale:\n  target:\n    p95_latency_seconds: .nan\n",
     "autoscale.target.p95_latency_seconds (line 3): must be a finite number"),
    ("autoscale:\n  behavior:\n    scale_up:\n      select_policy: max\n",
     "autoscale.behavior.scale_up.select_policy (line 4): must be one of Max, Min, Disabled"),
    ("autoscale:\n  behavior:\n    scale_down:\n      stabilization_window_seconds: 4000\n",
     "autoscale.behavior.scale_down.stabilization_window_seconds (line 4): must be 0..3600"),
    ("autoscale:\n  behavior:\n    scale_down:\n      select_policy: Min\n      percent_value: null\n",
     "autoscale.behavior.scale_down.select_policy (line 4): Min needs a policy"),
    ("autoscale:\n  behavior:\n    scale_down:\n      percent_value: 150\n",
     "autoscale.behavior.scale_down.percent_value (line 4): must be 1..100, got 150"),
    ("autoscale:\n  sync_period_seconds: 5\n  stale_after_seconds: 2\n",
     "autoscale.stale_after_seconds (line 3): must be at least autoscale.sync_period_seconds (5)"),
    ("memory: {sample_interval: 20}\nautoscale:\n  enabled: true\n",
     "autoscale.stale_after_seconds: must be longer than memory.sample_interval (20s)"),
    ("autoscale:\n  behavour: {}\n", "autoscale.behavour (line 2): unknown key; did you mean `behavior`?"),
])
def test_each_bad_autoscale_value_is_named_with_its_path_and_line(text, expected):
    assert any(e.startswith(expected) for e in errors_of(text)), errors_of(text)


def test_a_disabled_direction_needs_no_policy():
    s = parse_spec("autoscale:\n  behavior:\n    scale_down:\n      select_policy: Disabled\n"
                   "      percent_value: null\n", base_dir=Path("/srv/fleet"), cpu_count=2)
    assert s.autoscale.behavior.scale_down.select_policy == "Disabled"


# ---- max_replicas within the budgets (issue 23: 6 x 3 x 500 MiB passed --check, vetoed at run time)

FLEET_2W = ("gunicorn: {workers: 2}\nmemory: {worker_limit_mb: 500, fleet_budget_mb: 8192}\n"
            "instances: {count: 2, min: 1, max: 8}\n")


def test_a_max_replicas_the_memory_budget_cannot_hold_is_refused_with_the_count_that_fits():
    (err,) = errors_of(FLEET_2W + "autoscale:\n  enabled: true\n  max_replicas: 6\n")
    assert err.startswith("autoscale.max_replicas (line 6): the autoscaler could never reach 6 "
                          "instances, the budgets hold at most 5: memory.fleet_budget_mb (line 2): ")
    assert "6 instances x (2 workers + 1 master) x 500 MiB = 9000 MiB exceeds the budget of " \
           "8192 MiB by 808 MiB" in err
    assert err.endswith("set autoscale.max_replicas to at most 5, or raise memory.fleet_budget_mb")


def test_a_null_max_replicas_is_judged_at_instances_max():
    (err,) = errors_of(FLEET_2W + "autoscale: {enabled: true}\n")
    assert err.startswith("autoscale.max_replicas (null: instances.max 8): the autoscaler could "
                          "never reach 8 instances, the budgets hold at most 5")


@pytest.mark.parametrize("extra", [
    "autoscale:\n  enabled: true\n  max_replicas: 5\n",     # 5 x 3 x 500 = 7500: fits
    "autoscale:\n  enabled: false\n  max_replicas: 6\n",    # off: the count is the operator's
])
def test_a_max_replicas_that_fits_or_an_autoscaler_off_is_accepted(extra):
    s = parse_spec(FLEET_2W + extra, base_dir=Path("/srv/fleet"), cpu_count=2)
    assert s.autoscale.max_replicas in (5, 6)


def test_a_budget_that_fails_already_at_the_count_is_reported_once_for_the_count():
    errs = errors_of("gunicorn: {workers: 2}\nmemory: {worker_limit_mb: 500, fleet_budget_mb: 2000}\n"
                     "instances: {count: 2, min: 1, max: 8}\nautoscale: {enabled: true, max_replicas: 6}\n")
    assert len(errs) == 1 and errs[0].startswith("memory.fleet_budget_mb (line 2): 2 instances")


def test_the_shipped_autoscaled_specs_fit_their_budgets_at_max_replicas():
    root = Path(__file__).resolve().parents[2] / "etc" / "ultrascaled"
    for name in ("django-sync.yaml", "large.yaml"):
        from ultrascaled.spec.validate import largest_count_that_fits
        text = (root / name).read_text()
        s = parse_spec(text, base_dir=Path("/srv/fleet"), cpu_count=8)
        lo, hi = s.autoscale.bounds(s.instances)
        assert s.autoscale.enabled and largest_count_that_fits(s, hi) == hi


@pytest.mark.parametrize("cores", [2, 4, 6])
def test_the_docs_example_fits_the_default_fleet_and_its_error_is_the_one_shown(cores):
    import re
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "autoscaling.md").read_text()
    example = re.search(r"```yaml\n(autoscale:\n.*?)```", doc, re.S).group(1)
    fleet = (root / "etc" / "ultrascaled" / "fleet.yaml").read_text()
    s = parse_spec(fleet + example, base_dir=root / "etc" / "ultrascaled", cpu_count=cores)
    assert s.autoscale.enabled and s.autoscale.bounds(s.instances) == (1, 4)
    assert s.autoscale.target.cpu_wait_percent == 25
    with pytest.raises(SpecError) as info:     # the error the page shows: 6 on 4 cores
        parse_spec(fleet + example.replace("max_replicas: 4", "max_replicas: 6"),
                   base_dir=root / "etc" / "ultrascaled", cpu_count=4)
    shown = " ".join(doc.split("autoscale.max_replicas (line", 1)[1].split("```", 1)[0].split())
    assert " ".join(info.value.errors[0].split()) == "autoscale.max_replicas (line " + shown
