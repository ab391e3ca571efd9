"""The fleet spec: defaults, every error named with its path and line, budgets, the docs table."""
from pathlib import Path

import pytest

from ultrascaled import spec as specmod
from ultrascaled.spec import SpecError, iter_settings, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def errors_of(text: str, **kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, base_dir=Path("/srv/fleet"), cpu_count=kw.get("cpu_count", 2))
    return info.value.errors


def test_empty_mapping_gives_the_documented_defaults():
    s = parse_spec("{}", base_dir=Path("/srv/fleet"), cpu_count=8)
    assert s.instances.count == 2 and s.instances.base_port == 8001
    assert s.memory.worker_limit_mb == 500 and s.memory.fleet_budget_mb == 8192
    assert (s.api.host, s.api.port) == ("127.0.0.1", 9000)
    assert s.gunicorn.worker_class == "sync"  # in gunicorn itself: any app's venv has it
    assert s.gunicorn.threads == 1            # gunicorn's own default
    assert s.app.config is None               # not the reference app's app/gunicorn_conf.py
    assert s.workers == 4  # auto: 8 cores // 2, capped at 4
    assert s.app.directory == "/srv/fleet"  # relative default resolved against the spec's folder


def test_the_repository_spec_keeps_the_reference_app_settings():
    """The reference app's settings live in its spec, not in the defaults."""
    s = load_spec(ROOT / "etc/ultrascaled/fleet.yaml")
    assert s.app.module == "app.wsgi:application"
    assert s.app.config == "app/gunicorn_conf.py"
    assert (s.gunicorn.worker_class, s.gunicorn.worker_connections) == ("gevent", 1000)
    assert s.health.path == "/health"


@pytest.mark.parametrize("yaml_text,expected", [
    ("{}", ["--worker-class", "sync"]),
    ("gunicorn: {worker_class: gthread}", ["--worker-class", "gthread", "--threads", "1"]),
    ("gunicorn: {worker_class: gthread, threads: 8}", ["--worker-class", "gthread", "--threads", "8"]),
    # gevent through the shim that lets orphaned workers finish (ultrascaled/shims)
    ("gunicorn: {worker_class: gevent}", ["--worker-class", "ultrascale_gevent.GeventWorker"]),
])
def test_gunicorn_gets_the_worker_class_and_threads_only_for_gthread(yaml_text, expected):
    from ultrascaled.core.command import gunicorn_argv
    argv = gunicorn_argv(parse_spec(yaml_text, base_dir=Path("/srv/fleet"), cpu_count=2), 8001)
    i = argv.index("--worker-class")
    assert argv[i:i + 2] == expected[:2]
    if len(expected) > 2:
        assert argv[argv.index("--threads"):argv.index("--threads") + 2] == expected[2:]
    else:
        assert "--threads" not in argv  # a sync worker given threads > 1 becomes gthread
    assert "-c" not in argv  # no config file unless the spec names one


def test_the_factory_form_of_app_module_is_accepted_and_passed_as_is():
    from ultrascaled.core.command import gunicorn_argv
    s = parse_spec("app: {module: 'flaskr:create_app()'}", base_dir=Path("/srv"), cpu_count=2)
    assert gunicorn_argv(s, 8001)[-1] == "flaskr:create_app()"


@pytest.mark.parametrize("cores,workers", [(1, 1), (2, 1), (4, 2), (8, 4), (64, 4)])
def test_auto_workers_follow_cores_with_a_cap(cores, workers):
    assert parse_spec("{}", cpu_count=cores).workers == workers


def test_repository_default_spec_is_valid():
    s = load_spec(ROOT / "etc/ultrascaled/fleet.yaml")
    assert s.app.directory == str(ROOT)
    assert s.paths.state_dir == str(ROOT / "var/state")
    assert s.nginx.mode == "managed" and s.nginx.prefix == str(ROOT / "var/state/nginx")


@pytest.mark.parametrize("text,expected", [
    ("instances:\n  base_port: 80\n", "instances.base_port (line 2): must be 1024..65535, got 80"),
    ("instances:\n  count: two\n", "instances.count (line 2): must be an integer, got 'two'"),
    ("gunicorn:\n  workers: many\n", "gunicorn.workers (line 2): must be an integer or `auto`, got 'many'"),
    ("gunicorn:\n  worker_class: tornado\n", "gunicorn.worker_class (line 2): must be one of gevent, sync"),
    ("instances:\n  maxx: 3\n", "instances.maxx (line 2): unknown key; did you mean `max`?"),
    ("memory:\n  worker_limit_mb: true\n", "memory.worker_limit_mb (line 2): must be an integer, got True"),
    ("app: [1, 2]\n", "app (line 1): must be a mapping, got list"),
    ("app:\n  env: {A: [1]}\n", "app.env (line 2): values must be strings"),
    ("nginx:\n  mode: sometimes\n", "nginx.mode (line 2): must be one of managed, system, off"),
    ("instances: {count: 9}\n", "instances.count (line 1): must be within instances.min..max (1..8), got 9"),
    ("api: {port: 8003}\n", "api.port (line 1): 8003 is inside the instance ports 8001..8008"),
    ("api: {host: 0.0.0.0}\n", "api.host (line 1): 0.0.0.0 is not loopback, so api.token_file must name"),
    ("name: my fleet\n", "name (line 1): only letters, digits, - and _"),
    ("gunicorn:\n  threads: 4\n", "gunicorn.threads (line 2): 4 threads need gunicorn.worker_class "
                                  "gthread (got sync"),
    ("gunicorn:\n  threads: 0\n", "gunicorn.threads (line 2): must be 1..10000, got 0"),
    ("a: [\n", "(line 2): not valid YAML"),
])
def test_each_bad_value_is_named_with_its_path_and_line(text, expected):
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors


def test_all_errors_are_reported_at_once():
    errors = errors_of("instances:\n  base_port: 80\n  count: x\ngunicorn:\n  timeout: 0\nbogus: 1\n")
    assert len(errors) == 4
    assert [e.split(" ")[0] for e in errors] == ["instances.base_port", "instances.count",
                                                 "gunicorn.timeout", "bogus"]


def test_bare_off_in_yaml_means_off():
    assert parse_spec("nginx:\n  mode: off\n").nginx.mode == "off"


def test_memory_budget_refusal_gives_the_numbers():
    errors = errors_of("instances: {count: 4}\ngunicorn: {workers: 3}\nmemory: {fleet_budget_mb: 4096}\n")
    assert errors == ["memory.fleet_budget_mb (line 3): 4 instances x (3 workers + 1 master) x 500 MiB "
                      "= 8000 MiB exceeds the budget of 4096 MiB by 3904 MiB"]


def test_mongo_pool_per_process_keeps_the_fleet_within_its_connection_budget():
    s = parse_spec("instances: {max: 10}\ngunicorn: {workers: 4}\nmongodb: {connection_budget: 500}\n")
    assert s.mongo_pool_per_process() == 10  # 500 // (10 x 4) - 2 monitoring connections
    assert s.instances.max * s.workers * (s.mongo_pool_per_process() + 2) <= 500
    errors = errors_of("instances: {max: 10}\ngunicorn: {workers: 4}\nmongodb: {connection_budget: 20}\n")
    assert any("mongodb.connection_budget" in e for e in errors)


def test_relative_paths_resolve_against_the_spec_folder(tmp_path):
    f = tmp_path / "conf" / "fleet.yaml"
    f.parent.mkdir()
    f.write_text("paths: {state_dir: ../state, log_dir: /var/log/x}\n")
    s = load_spec(f)
    assert s.paths.state_dir == str(tmp_path / "state")
    assert s.paths.log_dir == "/var/log/x"
    assert s.source == str(f)


def test_unreadable_spec_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "missing.yaml")
    assert "cannot read" in info.value.errors[0]


def test_spec_is_frozen():
    s = parse_spec("{}")
    with pytest.raises(Exception):
        s.instances.count = 3  # type: ignore[misc]


def test_configuration_reference_lists_every_key_with_type_and_default():
    doc = (ROOT / "docs/configuration.md").read_text()
    assert specmod.reference_markdown() in doc, \
        "docs/configuration.md is stale: regenerate the table with `python -m ultrascaled.spec`"
    keys = [path for path, *_ in iter_settings()]
    assert len(keys) > 50 and "memory.worker_limit_mb" in keys and "nginx.keepalive" in keys


def test_gunicorn_keepalive_outlasts_nginx_and_count_based_recycling_is_off():
    g = parse_spec("{}").gunicorn
    assert (g.keepalive, g.max_requests, g.max_requests_jitter) == (65, 0, 0)


@pytest.mark.parametrize("text", [
    "gunicorn: {keepalive: 4}\n",                              # nginx's default: 4s
    "gunicorn: {keepalive: 60}\nnginx: {keepalive_timeout: 60s}\n",
    "gunicorn: {keepalive: 65}\nnginx: {keepalive_timeout: 2m}\n",
    "gunicorn: {keepalive: 3}\nnginx: {mode: system, upstream_file: /etc/nginx/u.conf}\n",
])
def test_gunicorn_keepalive_must_outlast_the_nginx_upstream_keepalive(text):
    errors = errors_of(text)
    assert any(e.startswith("gunicorn.keepalive (line 1): ") and "must be longer than "
               "nginx.keepalive_timeout" in e for e in errors), errors


@pytest.mark.parametrize("text", [
    "gunicorn: {keepalive: 5}\nnginx: {mode: 'off'}\n",       # no nginx in front
    "gunicorn: {keepalive: 5}\nnginx: {keepalive: 0}\n",      # no upstream keep-alive
    "gunicorn: {keepalive: 31}\nnginx: {keepalive_timeout: 30s}\n",
])
def test_gunicorn_keepalive_is_free_when_nginx_keeps_no_upstream_connection_that_long(text):
    parse_spec(text)


def test_mongodb_max_connecting_and_min_pool_size_never_exceed_the_pool_per_process():
    s = parse_spec("gunicorn: {workers: 1}\nmongodb: {min_pool_size: 50, max_connecting: 20}\n")
    assert s.mongo_pool_per_process() == 60 and s.mongodb.max_connecting == 20  # 500 // 8 - 2
    errors = errors_of("gunicorn: {workers: 4}\nmongodb: {min_pool_size: 50, max_connecting: 20}\n")
    assert errors == [
        "mongodb.max_connecting (line 2): 20 exceeds the pool each process gets (13 = 500 // (8 x 4) - 2)",
        "mongodb.min_pool_size (line 2): 50 exceeds the pool each process gets (13 = 500 // (8 x 4) - 2)"]
    assert "must be 1..1000, got 0" in errors_of("mongodb: {max_connecting: 0}\n")[0]
