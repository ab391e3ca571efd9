"""`processes:`: worker types beside the web fleet; every bad value names its key and line."""
import pytest

from ultrascaled.spec import SpecError, parse_spec
from ultrascaled.spec.schema import ProcessType


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_spec(text)
    return exc.value.errors


def test_a_spec_without_processes_is_the_web_fleet_alone():
    assert parse_spec("{}").processes == {}
    assert parse_spec("processes: {}\n").processes == {}


def test_a_worker_type_with_its_defaults():
    spec = parse_spec("processes:\n  worker:\n    command: [python, w.py]\n    env: {N: 1}\n")
    assert spec.processes == {"worker": ProcessType(command=["python", "w.py"], env={"N": "1"})}
    w = spec.processes["worker"]
    assert (w.kind, w.count, w.min, w.max, w.stop_signal, w.graceful_timeout, w.start_seconds,
            w.directory) == ("worker", 1, 0, 1, "TERM", 30.0, 1.0, None)


@pytest.mark.parametrize("when, schedule, every", [
    ("every: 30s", None, "30s"), ("every: 2", None, "2"), ("every: 1.5", None, "1.5"),
    ("every: 5m", None, "5m"), ("schedule: '*/15 * * * *'", "*/15 * * * *", None),
    ("schedule: '@daily'", "@daily", None), ("schedule: '30 3 * * 1-5'", "30 3 * * 1-5", None),
])
def test_a_job_type_with_its_defaults(when, schedule, every):
    t = parse_spec(f"processes:\n  nightly:\n    kind: job\n    command: [x]\n    {when}\n").processes["nightly"]
    assert (t.kind, t.schedule, t.every, t.concurrency, t.timeout, t.catch_up, t.history) == \
        ("job", schedule, every, "forbid", None, False, 20)


def test_directory_is_relative_to_the_spec_file(tmp_path):
    spec = parse_spec("processes:\n  w: {command: [x], directory: sub}\n", base_dir=tmp_path)
    assert spec.processes["w"].directory == str(tmp_path / "sub")


@pytest.mark.parametrize("entry, expected", [
    ("{command: python w.py}", "processes.w.command (line 2): must be an argv list (no shell)"),
    ("{}", "processes.w.command (line 2): is required"),
    ("{command: []}", "processes.w.command (line 2): is required"),
    ("{command: ['', x]}", "processes.w.command (line 2): its first item"),
    ("{command: [x], count: 9, max: 8}", "processes.w.count (line 2): must be within processes.w.min..max (0..8), got 9"),
    ("{command: [x], count: 2, min: 3}", "processes.w.min (line 2): must not exceed processes.w.max (2)"),
    ("{command: [x], min: 3, max: 2, count: 2}", "processes.w.min (line 2): must not exceed processes.w.max (2)"),
    ("{command: [x], count: -1}", "processes.w.count (line 2): must be 0..256, got -1"),
    ("{command: [x], stop_signal: KILL}", "processes.w.stop_signal (line 2): must be one of TERM"),
    ("{command: [x], graceful_timeout: 0}", "processes.w.graceful_timeout (line 2): must be 0.1..86400"),
    ("{command: [x], start_seconds: x}", "processes.w.start_seconds (line 2): must be a number"),
    ("{command: [x], env: {1A: x}}", "processes.w.env (line 2): '1A' is not an environment variable name"),
    ("{command: [x], comand: [y]}", "processes.w.comand (line 2): unknown key; did you mean `command`?"),
    ("{command: [x], kind: job, schedule: x}", "processes.w.schedule (line 2): is not a cron schedule"),
    ("{command: [x], kind: job, schedule: '61 * * * *'}", "processes.w.schedule (line 2): is not a cron schedule (minute hour day month weekday, e.g. '*/15 * * * *'): Bad minute"),
    ("{command: [x], kind: job}", "processes.w (line 2): a job needs exactly one of processes.w.schedule"),
    ("{command: [x], kind: job, every: 5s, schedule: '* * * * *'}", "processes.w (line 2): a job needs exactly one of"),
    ("{command: [x], kind: job, every: 0.5}", "processes.w.every (line 2): must be 1 s..7d, got 0.5"),
    ("{command: [x], kind: job, every: 8d}", "processes.w.every (line 2): must be 1 s..7d"),
    ("{command: [x], kind: job, every: soon}", "processes.w.every (line 2): must be a period such as 30s"),
    ("{command: [x], kind: job, every: yes}", "processes.w.every (line 2): must be a period"),
    ("{command: [x], kind: job, every: 5s, count: 2}", "processes.w.count (line 2): not a key of a job"),
    ("{command: [x], kind: job, every: 5s, start_seconds: 2}", "processes.w.start_seconds (line 2): not a key of a job"),
    ("{command: [x], kind: job, every: 5s, concurrency: never}", "processes.w.concurrency (line 2): must be one of forbid, replace, allow"),
    ("{command: [x], kind: job, every: 5s, timeout: 0}", "processes.w.timeout (line 2): must be 1..604800"),
    ("{command: [x], kind: job, every: 5s, history: 0}", "processes.w.history (line 2): must be 1..1000"),
    ("{kind: job, every: 5s}", "processes.w.command (line 2): is required"),
    ("{command: [x], schedule: '* * * * *'}", "processes.w.schedule (line 2): not a key of a worker"),
    ("{command: [x], catch_up: true}", "processes.w.catch_up (line 2): not a key of a worker"),
    ("{command: [x], kind: web}", "processes.w.kind (line 2): `kind: web` is not built yet"),
    ("{command: [x], kind: cron}", "processes.w.kind (line 2): must be one of worker, job, web"),
    ("5", "processes.w (line 2): must be a mapping"),
    ("[]", "processes.w (line 2): must be a mapping"),
    ("~", "processes.w.command (line 2): is required"),
    ("{command: [[a]]}", "processes.w.command (line 2): must be a list of strings"),
    ("{command: {a: b}}", "processes.w.command (line 2): must be a list"),
    ("{command: [x], kind: [worker]}", "processes.w.kind (line 2): must be a string"),
    ("{command: [x], max: 0}", "processes.w.max (line 2): must be 1..256, got 0"),
])
def test_a_bad_value_names_its_key_and_line(entry, expected):
    errors = errors_of(f"processes:\n  w: {entry}\n")
    assert any(e.startswith(expected) for e in errors), errors
    assert len(errors) == 1, errors   # a kind not built yet is one error, not one per key it has


@pytest.mark.parametrize("text, expected", [
    ("processes:\n  web: {command: [x]}\n", "processes.web (line 2): `web` is the gunicorn fleet"),
    ("processes:\n  'a b': {command: [x]}\n", "processes.a b (line 2): 'a b' is not a process type name"),
    ("processes:\n  a.b: {command: [x]}\n", "processes.a.b (line 2): 'a.b' is not a process type name"),
    ("processes: [worker]\n", "processes (line 1): must be a mapping of process type names"),
])
def test_names_and_the_section_itself(text, expected):
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_problem_is_reported_at_once_with_the_web_keys_too():
    errors = errors_of("instances: {base_port: 80}\nprocesses:\n  a: {}\n  b: {command: [x], count: 99, max: 8}\n")
    assert [e.split(":")[0] for e in errors] == [
        "instances.base_port (line 1)", "processes.a.command (line 3)", "processes.b.count (line 4)"]


# ---- readiness and start order (spec/readiness.py) ------------------------------------------------

def test_ready_after_and_requires_with_their_defaults_and_normalised_values():
    spec = parse_spec("processes:\n  cache: {command: [x], ready: {tcp: 6380}, after: [], max: 2}\n"
                      "  w: {command: [x], after: [cache, web], ready: {http: 'http://[::1]:9101/h'},\n"
                      "      requires: ['tcp://127.0.0.1:6379', 'tcp://db.internal:5432', 'tcp://[::1]:1']}\n"
                      "  j: {kind: job, command: [x], every: 1m, requires: ['tcp://127.0.0.1:6379']}\n"
                      "  plain: {command: [x], max: 2}\n")
    c, w, j, plain = (spec.processes[n] for n in ("cache", "w", "j", "plain"))
    assert (c.ready, c.after, c.ready_timeout) == ({"tcp": 6380}, [], 60.0)
    assert (w.ready, w.after, len(w.requires)) == ({"http": "http://[::1]:9101/h"}, ["cache", "web"], 3)
    assert j.requires == ["tcp://127.0.0.1:6379"]
    assert (plain.ready, plain.after, plain.requires) == (None, ["web"], [])


@pytest.mark.parametrize("entry, expected", [
    ("{command: [x], ready: 6380}", "processes.w.ready (line 2): must be a mapping with one of tcp, http or command"),
    ("{command: [x], ready: {}}", "processes.w.ready (line 2): needs exactly one of tcp, http or command, got none"),
    ("{command: [x], ready: {tcp: 1, http: 'http://127.0.0.1/'}}", "processes.w.ready (line 2): needs exactly one of tcp, http or command, got tcp and http"),
    ("{command: [x], ready: {tcp: 70000}}", "processes.w.ready (line 2): tcp: must be a port 1-65535"),
    ("{command: [x], ready: {tcp: true}}", "processes.w.ready (line 2): tcp: must be a port 1-65535"),
    ("{command: [x], ready: {http: 'http://10.0.0.5:9101/health'}}", "processes.w.ready (line 2): http: must be a loopback address"),
    ("{command: [x], ready: {http: 'http://example.com/health'}}", "processes.w.ready (line 2): http: must be a loopback address"),
    ("{command: [x], ready: {http: 'https://127.0.0.1/health'}}", "processes.w.ready (line 2): http: must start with http://"),
    ("{command: [x], ready: {http: 'http://127.0.0.1:99999/'}}", "processes.w.ready (line 2): http: 'http://127.0.0.1:99999/' is not a URL"),
    ("{command: [x], ready: {command: 'celery inspect ping'}}", "processes.w.ready (line 2): command: must be an argv list"),
    ("{command: [x], ready: {command: []}}", "processes.w.ready (line 2): command: must be an argv list"),
    ("{command: [x], ready: {tcp: 1, timeout: 5}}", "processes.w.ready (line 2): unknown key 'timeout'"),
    ("{command: [x], ready_timeout: 0}", "processes.w.ready_timeout (line 2): must be 0.5..86400, got 0"),
    ("{command: [x], kind: job, every: 5s, ready: {tcp: 1}}", "processes.w.ready (line 2): not a key of a job: a job's run is not awaited"),
    ("{command: [x], kind: job, every: 5s, ready_timeout: 5}", "processes.w.ready_timeout (line 2): not a key of a job"),
    ("{command: [x], kind: job, every: 5s, after: [web]}", "processes.w.after (line 2): not a key of a job: a job's schedule starts with the web fleet"),
    ("{command: [x], requires: ['redis:6379']}", "processes.w.requires (line 2): must be tcp://HOST:PORT (e.g. tcp://127.0.0.1:6379), got 'redis:6379'"),
    ("{command: [x], requires: ['tcp://127.0.0.1']}", "processes.w.requires (line 2): must be tcp://HOST:PORT with a port 1-65535"),
    ("{command: [x], requires: ['tcp://::1:6379']}", "processes.w.requires (line 2): must be tcp://HOST:PORT with a port 1-65535"),
    ("{command: [x], requires: ['tcp://a:1', 'tcp://a:1']}", "processes.w.requires (line 2): 'tcp://a:1' is listed twice"),
    ("{command: [x], kind: job, every: 5s, requires: [http://x]}", "processes.w.requires (line 2): must be tcp://HOST:PORT"),
    ("{command: [x], after: [nope]}", "processes.w.after (line 2): 'nope' is not a process type; after names web or worker types (web)"),
    ("{command: [x], after: [w]}", "processes.w.after (line 2): a type cannot start after itself ('w')"),
    ("{command: [x], after: [web, web]}", "processes.w.after (line 2): 'web' is listed twice"),
])
def test_a_bad_readiness_or_start_order_names_its_key_and_line(entry, expected):
    errors = errors_of(f"processes:\n  w: {entry}\n")
    assert any(e.startswith(expected) for e in errors), errors
    assert len(errors) == 1, errors


def test_after_refuses_a_job_and_each_cycle_once():
    errors = errors_of("processes:\n  a: {command: [x], after: [b], max: 1}\n  b: {command: [x], after: [a], max: 1}\n"
                       "  j: {kind: job, command: [x], every: 1m}\n  c: {command: [x], after: [j], max: 1}\n"
                       "  d: {command: [x], after: [e], max: 1}\n  e: {command: [x], after: [f], max: 1}\n"
                       "  f: {command: [x], after: [d, web], max: 1}\n")
    assert errors == [
        "processes.a.after (line 2): a cycle: a -> b -> a (none of them would ever start)",
        "processes.c.after (line 5): 'j' is a job (it has no processes to wait for); after names web "
        "or worker types (web, a, b, d, e, f)",
        "processes.d.after (line 6): a cycle: d -> e -> f -> d (none of them would ever start)"]
