"""ultrascalectl autoscale: its actions parse, bad durations are usage errors, docs/cli.md
describes every action's options, and the status renders the figures the daemon gives."""
import re
from pathlib import Path

import pytest

from ultrascaled.surface import cli


@pytest.mark.parametrize("argv,attrs", [
    (["autoscale", "status"], {"action": "status", "json": False}),
    (["autoscale", "pause"], {"action": "pause", "duration": None, "reason": "operator"}),
    (["autoscale", "pause", "--for", "30m", "--reason", "load test"],
     {"action": "pause", "duration": "30m", "reason": "load test"}),
    (["autoscale", "resume", "--json"], {"action": "resume", "json": True, "process": None}),
    (["autoscale", "resume", "worker"], {"action": "resume", "process": "worker"}),
])
def test_autoscale_actions_parse(argv, attrs):
    args = cli.parse_args(argv)
    assert {k: getattr(args, k) for k in attrs} == attrs


@pytest.mark.parametrize("argv,word", [
    (["autoscale"], "required"),
    (["autoscale", "stop"], "invalid choice"),
    (["autoscale", "pause", "--for", "soon"], "not a duration"),
    (["autoscale", "pause", "--for", "0"], "more than 0"),
    (["autoscale", "status", "--for", "5m"], "unrecognized"),
])
def test_bad_autoscale_arguments_are_usage_errors(argv, word, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    assert word in capsys.readouterr().err


@pytest.mark.parametrize("action", ["status", "pause", "resume"])
def test_docs_cli_md_describes_every_autoscale_option(action, capsys):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    section = doc.split("\n### autoscale\n", 1)[1].split("\n## ", 1)[0]
    assert f"`{action}`" in section
    assert cli.main(["autoscale", action, "--help"]) == 0
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", capsys.readouterr().out)) - {"-h", "--help"}
    assert options and not sorted(o for o in options if f"`{o}" not in section)


def test_status_shows_signals_targets_and_reasons():
    st = {"enabled": True, "paused": True, "paused_reason": "manual scale to 3", "paused_until": None,
          "min_replicas": 1, "max_replicas": 8, "current": 3, "ready": 2, "host_cpu_percent": 63.4,
          "targets": {"cpu_utilization": 70.0, "cpu_wait_percent": 25.0, "p95_latency_seconds": 0.5},
          "signals": {"cpu_utilization": {"value": 81.23, "target": 70.0, "ratio": 1.16, "desired": 4},
                      "cpu_wait_percent": {"value": 12.5, "target": 25.0, "ratio": 0.5, "desired": 2},
                      "p95_latency_seconds": {"value": None, "target": 0.5, "ratio": None,
                                              "desired": None, "note": "missing"}},
          "recommendation": 4,
          "decisions": [{"time": 1.7e9, "action": "hold", "current": 3, "desired": 3,
                         "reason": "paused until resumed (manual scale to 3)"}]}
    out = cli.render_autoscale(st)
    assert "PAUSED until resumed (manual scale to 3)" in out
    assert "instances 3 (ready 2), replicas 1..8, host CPU 63%" in out
    assert re.search(r"cpu_utilization\s+81\.2%\s+70\.0%\s+1\.16\s+4", out)
    assert re.search(r"p95_latency_seconds\s+-\s+0\.5s\s+-\s+- \(missing\)", out)
    assert re.search(r"cpu_wait_percent\s+12\.5%\s+25\.0%\s+0\.50\s+2", out)
    assert "recommendation: 4" in out and "hold" in out
    out = cli.render_autoscale({**st, "fleet_cpu_percent": 21.6})
    assert "host CPU 63% (the fleet's own 22%)" in out


def test_status_shows_each_worker_type_on_its_queue():
    st = {"enabled": False, "paused": False, "min_replicas": 1, "max_replicas": 8, "current": 2, "ready": 2,
          "targets": {}, "signals": {}, "decisions": [],
          "processes": {"worker": {"queue": {"redis": "redis://:***@h:6379/0", "list": "rq:queue:default"},
                                   "target": 50.0, "min": 1, "max": 8, "current": 5, "running": 4,
                                   "queue_depth": 480, "reachable": False, "paused": True,
                                   "paused_reason": "manual scale to 5",
                                   "last": {"action": "hold", "current": 5, "desired": 5,
                                            "reason": "paused until resumed (manual scale to 5)"}}}}
    out = cli.render_autoscale(st)
    assert ("worker: autoscale PAUSED (manual scale to 5), queue rq:queue:default at "
            "redis://:***@h:6379/0 (UNREACHABLE): depth 480, target 50 per process, processes 5 "
            "(running 4), 1..8") in out
    assert "  last: hold 5 paused until resumed (manual scale to 5)" in out
