"""core/reload_plan.py, the pure decision a reload applies and its dry run shows: keys as
dotted leaves, one key set at a time, and why each port restarts."""
from __future__ import annotations

import pytest

from ultrascaled.core import command, reload_plan
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.states import State
from ultrascaled.spec import parse_spec

BASE = ("name: u\napp: {directory: /srv/app, env: {A: '1', DB_SECRET: s1}}\n"
        "instances: {count: 2, min: 1, max: 4, base_port: 20000}\n")


def fp(spec, port):
    return command.fingerprint(spec, port, f"/log/{port}", spec.app.directory)


def running(spec):
    return {spec.port(i): (State.RUNNING, fp(spec, spec.port(i))) for i in range(2)}


def test_an_env_entry_removed_and_one_changed_are_each_named():
    old = parse_spec(BASE)
    new = parse_spec(BASE.replace("env: {A: '1', DB_SECRET: s1}", "env: {DB_SECRET: s2}"))
    d = reload_plan.decide(old, new, 2, running(old), fp)
    assert [(k.key, k.old, k.new) for k in d.keys] == [("app.env.A", "1", None),
                                                        ("app.env.DB_SECRET", "(hidden)", "(hidden)")]
    assert d.diff.changed == (20000, 20001)
    assert d.why[20000] == ("app.env.A changed", "app.env.DB_SECRET changed")
    assert d.sections == ("app",) and d.count == 2 and not d.nginx_reconfigure


def test_the_scaled_count_is_kept_unless_instances_count_changes_and_is_clamped():
    old = parse_spec(BASE)
    same = reload_plan.decide(old, parse_spec(BASE), 3, running(old), fp)
    assert same.count == 3 and not same.keys and same.diff.added == (20002,)
    fewer = reload_plan.decide(old, parse_spec(BASE.replace("max: 4", "max: 2")), 3, running(old), fp)
    assert fewer.count == 2 and fewer.nginx_keys == ("instances.max",)


def test_a_reload_that_would_move_the_fleet_is_refused():
    old = parse_spec(BASE)
    with pytest.raises(ScaleRefused, match="cannot change on a reload"):
        reload_plan.decide(old, parse_spec(BASE.replace("name: u", "name: v")), 2, running(old), fp)


def test_an_instance_started_with_another_command_says_so():
    old = parse_spec(BASE)
    seen = {20000: (State.RUNNING, "adopted-with-other-command"), 20001: running(old)[20001]}
    d = reload_plan.decide(old, parse_spec(BASE), 2, seen, fp)
    assert d.diff.changed == (20000,) and "runs another command" in d.why[20000][0]
    assert d.changes_anything


def test_a_changed_env_file_value_is_named_and_never_shown(tmp_path):
    env = tmp_path / "app.env"
    env.write_text("DB_URL=postgres://u:first@db/app\nMODE=a\n")
    env.chmod(0o600)
    text = BASE.replace("env: {A: '1', DB_SECRET: s1}", f"env_file: [{env}]")
    old = parse_spec(text)
    env.write_text("DB_URL=postgres://u:second@db/app\nMODE=a\n")
    new = parse_spec(text)
    d = reload_plan.decide(old, new, 2, running(old), fp)
    assert [(k.key, k.old, k.new) for k in d.keys] == [("app.file_env.DB_URL", "(hidden)", "(hidden)")]
    assert d.why[20000] == ("app.file_env.DB_URL changed",)
    shown = repr(reload_plan.describe(d, old))
    assert "first" not in shown and "second" not in shown


def test_a_worker_types_changes_are_named_per_key_its_secrets_hidden_and_restart_web_only_for_the_pool():
    old = parse_spec("processes:\n  w: {command: [x], env: {API_TOKEN: a, QUEUE: q}}\n")
    new = parse_spec("processes:\n  w: {command: [y], env: {API_TOKEN: b, QUEUE: r}}\n  mail: {command: [m], max: 2}\n")
    keys = {k.key: (k.old, k.new) for k in reload_plan.key_changes(old, new)}
    assert keys["processes.w.command"] == (["x"], ["y"])
    assert keys["processes.w.env.API_TOKEN"] == ("(hidden)", "(hidden)")
    assert keys["processes.w.env.QUEUE"] == ("q", "r")
    assert keys["processes.mail.command"] == (None, ["m"])
    running = {p: (State.RUNNING, command.fingerprint(old, p)) for p in (8001, 8002)}
    same_count = parse_spec("processes:\n  w: {command: [y], env: {API_TOKEN: b, QUEUE: r}}\n")
    d = reload_plan.decide(old, same_count, 2, running, command.fingerprint)
    assert d.sections == ("processes",) and d.diff.changed == ()
    # a type added: its processes hold MongoDB pools too, so the one every process gets shrinks,
    # and the web instances restart (one at a time) to take it
    d = reload_plan.decide(old, new, 2, running, command.fingerprint)
    assert new.mongo_pool_per_process() < old.mongo_pool_per_process()
    assert d.sections == ("processes",) and d.diff.changed == (8001, 8002)
