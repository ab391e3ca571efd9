"""app/gunicorn_conf.py: pure settings from env (tables) and gunicorn accepting the file."""
from __future__ import annotations

import subprocess

import pytest

from app.gunicorn_conf import ConfigError, auto_workers, settings_from_env

from app_helpers import GUNICORN_CONF, PYTHON, REPO

GB = 1024 ** 3


@pytest.mark.parametrize("cpus, mem, per_worker_mb, cap, expected", [
    (4, 16 * GB, 256, 8, 4),        # one per core
    (64, 16 * GB, 256, 8, 8),       # capped
    (8, 1 * GB, 256, 16, 4),        # memory-bound: 1 GB / 256 MB
    (8, 100 * 1024 ** 2, 256, 8, 1),  # at least one
    (0, None, 256, 8, 1),
])
def test_auto_workers(cpus, mem, per_worker_mb, cap, expected):
    assert auto_workers(cpus, mem, per_worker_mb, cap) == expected


def test_defaults():
    s = settings_from_env({}, cpus=2, mem_available=8 * GB)
    assert s["worker_class"] == "gevent"
    assert s["workers"] == 2
    assert s["bind"] == ["127.0.0.1:8000"]
    assert s["worker_connections"] == 1000
    assert (s["timeout"], s["graceful_timeout"]) == (30, 30)
    assert s["max_requests"] > 0 and s["max_requests_jitter"] > 0
    assert s["control_socket_disable"] is True
    assert s["loglevel"] == "info"


def test_env_overrides():
    s = settings_from_env({"ULTRASCALE_PORT": "8013", "ULTRASCALE_INSTANCE": "13", "GUNICORN_WORKERS": "5",
                           "GUNICORN_WORKER_CONNECTIONS": "2000", "GUNICORN_TIMEOUT": "60",
                           "GUNICORN_MAX_REQUESTS": "0", "LOG_LEVEL": "DEBUG", "GUNICORN_KEEPALIVE": "5"})
    assert s["bind"] == ["127.0.0.1:8013"]
    assert s["proc_name"] == "ultrascale-13"
    assert (s["workers"], s["worker_connections"], s["timeout"], s["max_requests"]) == (5, 2000, 60, 0)
    assert (s["loglevel"], s["keepalive"]) == ("debug", 5)


def test_port_falls_back_to_assessment_port_variable():
    assert settings_from_env({"PORT": "9000"}, cpus=1, mem_available=GB)["bind"] == ["127.0.0.1:9000"]


def test_bad_values_are_all_named():
    with pytest.raises(ConfigError) as info:
        settings_from_env({"GUNICORN_WORKERS": "many", "GUNICORN_TIMEOUT": "-1", "LOG_LEVEL": "loud"})
    for name in ("GUNICORN_WORKERS", "GUNICORN_TIMEOUT", "LOG_LEVEL"):
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
