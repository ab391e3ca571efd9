"""app/gunicorn_conf.py: pure settings from env (tables) and gunicorn accepting the file."""
from __future__ import annotations

import subprocess

import pytest

from app.gunicorn_conf import ConfigError, settings_from_env
from ultrascaled.spec import load_spec, parse_spec

from app_helpers import GUNICORN_CONF, PYTHON, REPO


def test_defaults():
    s = settings_from_env({})
    assert s["worker_class"] == "gevent"
    assert s["bind"] == ["127.0.0.1:8000"]
    assert s["worker_connections"] == 1000
    assert (s["timeout"], s["graceful_timeout"]) == (30, 30)
    assert s["control_socket_disable"] is True
    assert s["loglevel"] == "info"


def test_the_spec_is_the_one_source_of_workers_keepalive_and_recycling():
    """The daemon passes these on the command line from the spec; the config file sets none of
    them (a second value here used to be silently overridden), whatever the environment says."""
    s = settings_from_env({"GUNICORN_WORKERS": "5", "GUNICORN_KEEPALIVE": "5", "WEB_CONCURRENCY": "3",
                           "GUNICORN_MAX_REQUESTS": "0", "GUNICORN_MAX_REQUESTS_JITTER": "1"})
    assert not {"workers", "keepalive", "max_requests", "max_requests_jitter"} & set(s)
    g = parse_spec("{}").gunicorn
    assert (g.keepalive, g.max_requests, g.max_requests_jitter) == (65, 0, 0)


def test_values_both_the_file_and_the_spec_give_agree():
    # The reference app's spec (the defaults are for an app of your own: sync, no config file).
    s, g = settings_from_env({}), load_spec(REPO / "etc/ultrascaled/fleet.yaml").gunicorn
    assert (s["worker_class"], s["worker_connections"], s["timeout"], s["graceful_timeout"]) == \
        (g.worker_class, g.worker_connections, g.timeout, g.graceful_timeout)


def test_env_overrides():
    s = settings_from_env({"ULTRASCALE_PORT": "8013", "ULTRASCALE_INSTANCE": "13",
                           "GUNICORN_WORKER_CONNECTIONS": "2000", "GUNICORN_TIMEOUT": "60",
                           "LOG_LEVEL": "DEBUG"})
    assert s["bind"] == ["127.0.0.1:8013"]
    assert s["proc_name"] == "ultrascale-13"
    assert (s["worker_connections"], s["timeout"]) == (2000, 60)
    assert s["loglevel"] == "debug"


def test_port_falls_back_to_assessment_port_variable():
    assert settings_from_env({"PORT": "9000"})["bind"] == ["127.0.0.1:9000"]


def test_bad_values_are_all_named():
    with pytest.raises(ConfigError) as info:
        settings_from_env({"GUNICORN_BACKLOG": "many", "GUNICORN_TIMEOUT": "-1", "LOG_LEVEL": "loud"})
    for name in ("GUNICORN_BACKLOG", "GUNICORN_TIMEOUT", "LOG_LEVEL"):
        assert name in str(info.value)


def test_gunicorn_accepts_the_config_file_and_cli_flags_win():
    out = subprocess.run([PYTHON, "-m", "gunicorn", "-c", GUNICORN_CONF, "--workers", "3",
                          "--print-config", "app.wsgi:application"],
                         cwd=str(REPO), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = {l.split("=", 1)[0].strip(): l.split("=", 1)[1].strip() for l in out.stdout.splitlines() if "=" in l}
    assert lines["workers"] == "3"                  # command line over config file
    assert lines["worker_class"] == "gevent"
    assert lines["control_socket_disable"] == "True"
    assert "post_fork" in lines and "child_exit" in lines


def test_gunicorn_started_as_the_daemon_starts_it_gets_the_spec_values():
    from ultrascaled.core.command import gunicorn_argv
    spec = parse_spec("app: {directory: .}\n", base_dir=REPO)
    argv = gunicorn_argv(spec, 8001)
    argv[0] = PYTHON
    out = subprocess.run(argv[:-1] + ["--print-config", argv[-1]], cwd=str(REPO),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = {l.split("=", 1)[0].strip(): l.split("=", 1)[1].strip() for l in out.stdout.splitlines() if "=" in l}
    assert (lines["keepalive"], lines["max_requests"], lines["max_requests_jitter"]) == ("65", "0", "0")
    assert lines["workers"] == str(spec.workers)
