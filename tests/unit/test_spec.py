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
    # uvicorn's classes through the shim that makes orphaned workers finish and exit
    ("gunicorn: {worker_class: uvicorn_worker.UvicornWorker}",
     ["--worker-class", "ultrascale_uvicorn.UvicornWorker"]),
    ("gunicorn: {worker_class: uvicorn_worker.UvicornH11Worker}",
     ["--worker-class", "ultrascale_uvicorn.UvicornH11Worker"]),
    ("gunicorn: {worker_class: uvicorn.workers.UvicornWorker}",
     ["--worker-class", "ultrascale_uvicorn.LegacyUvicornWorker"]),
    # a class of the operator's, as given
    ("gunicorn: {worker_class: myworkers.FastWorker, concurrency: 8}",
     ["--worker-class", "myworkers.FastWorker"]),
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


def test_uvicorn_workers_run_the_shim_from_the_daemons_shims_folder_on_the_pythonpath():
    from ultrascaled.core import command
    for wc, on_path in [("uvicorn_worker.UvicornWorker", True), ("gevent", True), ("sync", False),
                        ("myworkers.FastWorker, concurrency: 8", False)]:
        s = parse_spec(f"gunicorn: {{worker_class: {wc}}}\napp: {{env: {{PYTHONPATH: /srv/lib}}}}",
                       base_dir=Path("/srv/fleet"), cpu_count=2)
        path = command.instance_env(s, 0, 8001, "/tmp/m")["PYTHONPATH"].split(":")
        assert (path == [command.SHIMS, "/srv/lib"]) if on_path else (path == ["/srv/lib"]), (wc, path)
    assert (Path(command.SHIMS) / "ultrascale_uvicorn.py").is_file()


@pytest.mark.parametrize("wc", ["uvicorn_worker.UvicornWorker", "uvicorn_worker.UvicornH11Worker",
                                "uvicorn.workers.UvicornWorker", "uvicorn.workers.UvicornH11Worker"])
def test_uvicorns_classes_are_accepted_and_counted_as_worker_connections(wc):
    from ultrascaled.spec.budget import requests_per_worker
    s = parse_spec(f"gunicorn: {{worker_class: {wc}, worker_connections: 300}}",
                   base_dir=Path("/srv"), cpu_count=2)
    assert s.gunicorn.worker_class == wc and s.gunicorn.concurrency is None
    per, formula = requests_per_worker(s)
    assert per == 300 and "uvicorn sets no per-worker limit" in formula
    s = parse_spec(f"gunicorn: {{worker_class: {wc}, concurrency: 64}}", base_dir=Path("/srv"), cpu_count=2)
    assert requests_per_worker(s) == (64, f"gunicorn.concurrency = 64 (worker_class {wc})")


def test_a_dotted_class_of_the_operators_is_accepted_with_its_concurrency():
    from ultrascaled.spec.budget import requests_per_worker
    s = parse_spec("gunicorn: {worker_class: my_pkg.workers.Fast2, concurrency: 1}",
                   base_dir=Path("/srv"), cpu_count=2)
    assert requests_per_worker(s)[0] == 1


@pytest.mark.parametrize("text,expected", [
    ("gunicorn:\n  worker_class: myworkers.Fast\n",
     "gunicorn.concurrency (line 2): required for gunicorn.worker_class myworkers.Fast, a class "
     "ultrascaled does not know: say how many requests one of its workers serves at once"),
    ("gunicorn:\n  worker_class: sync\n  concurrency: 4\n",
     "gunicorn.concurrency (line 3): is for a dotted gunicorn.worker_class only; a sync worker "
     "serves 1 request at a time"),
    ("gunicorn:\n  worker_class: gthread\n  concurrency: 4\n",
     "gunicorn.concurrency (line 3): is for a dotted gunicorn.worker_class only; gthread serves "
     "gunicorn.threads requests at a time: set that"),
    ("gunicorn:\n  worker_class: gevent\n  concurrency: 4\n",
     "gunicorn.concurrency (line 3): is for a dotted gunicorn.worker_class only; gevent serves "
     "gunicorn.worker_connections at a time: set that"),
    ("gunicorn:\n  worker_class: myworkers.Fast\n  concurrency: 0\n",
     "gunicorn.concurrency (line 3): must be 1..100000, got 0"),
    ("gunicorn:\n  worker_class: myworkers.Fast\n  concurrency: many\n",
     "gunicorn.concurrency (line 3): must be an integer, got 'many'"),
    ("gunicorn:\n  worker_class: uvicorn_worker.UvicornWorker\n  concurrency: 1.5\n",
     "gunicorn.concurrency (line 3): must be an integer, got 1.5"),
    ("gunicorn:\n  worker_class: 'egg:gunicorn#gevent'\n",
     "gunicorn.worker_class (line 2): must be one of gevent, sync, gthread, eventlet, or a worker "
     "class as a dotted path"),
    ("gunicorn:\n  worker_class: uvicorn_worker.UvicornWorker()\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: uvicorn_worker.\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: .UvicornWorker\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: uvicorn_worker:UvicornWorker\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: 'uvicorn_worker. UvicornWorker'\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: 1a.Worker\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: ''\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: [uvicorn_worker.UvicornWorker]\n",
     "gunicorn.worker_class (line 2): must be a string"),
    ("gunicorn:\n  worker_class: " + "a." * 120 + "B\n", "gunicorn.worker_class (line 2): must be"),
    ("gunicorn:\n  worker_class: uvicorn_worker.UvicornWorker\n  threads: 4\n",
     "gunicorn.threads (line 3): 4 threads need gunicorn.worker_class gthread"),
])
def test_each_bad_worker_class_or_concurrency_is_named_with_its_key_and_line(text, expected):
    errors = errors_of(text)
    assert any(expected in e for e in errors), errors
    assert len(errors) == 1, errors   # no budget judged on a guess besides


def test_a_bad_worker_class_is_shown_short_and_escaped():
    [error] = errors_of("gunicorn:\n  worker_class: \"" + "x" * 300 + "\\e[2J\"\n")
    assert len(error) < 300 and "\x1b" not in error


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
    ("gunicorn:\n  worker_class: tornado\n", "or a worker class as a dotted path `module.Class` (for an "
                                             "ASGI app: uvicorn_worker.UvicornWorker), got 'tornado'"),
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
