"""Hostile and broken spec files: each is refused with a SpecError naming what is wrong, quickly,
never with a traceback or another exception; and every problem of a spec is reported at once."""
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from support import needs
from ultrascaled.spec import MAX_SPEC_BYTES, SpecError, load_spec, parse_spec


def errors_of(text, **kw) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, base_dir=Path("/srv/fleet"), cpu_count=kw.get("cpu_count", 2))
    return info.value.errors


def file_errors(path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.errors


def one_error(text) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


# ---- 1. every error in one phase ---------------------------------------------------------

FOUR_PROBLEMS = """\
gunicorn:
  timeout: lots
api:
  port: 8002
memory:
  fleet_budget_mb: 100
bogus: 1
"""


def test_type_errors_no_longer_hide_cross_key_and_budget_errors():
    errors = errors_of(FOUR_PROBLEMS)
    assert [e.split(" (line")[0] for e in errors] == [
        "gunicorn.timeout", "api.port", "memory.fleet_budget_mb", "bogus"], errors
    assert "8002 is inside the instance ports 8001..8008" in errors[1]
    assert "2 instances x (1 worker + 1 master) x 500 MiB = 2000 MiB exceeds" in errors[2]


def test_checks_whose_inputs_are_invalid_are_skipped_not_judged_on_defaults():
    # count is unreadable: neither "count within min..max" nor the memory budget (which uses
    # count) is judged; the MongoDB budget, which does not use it, still is.
    errors = errors_of("instances: {count: x, max: 8}\nmemory: {fleet_budget_mb: 64}\n"
                       "mongodb: {connection_budget: 5}\n")
    assert [e.split(" (line")[0] for e in errors] == ["instances.count", "mongodb.connection_budget"]


def test_one_bad_nginx_value_does_not_hide_the_other_nginx_checks():
    errors = errors_of("nginx:\n  listen: x\n  server_name: 'a; b'\n")
    assert [e.split(": ")[0] for e in errors] == ["nginx.listen (line 2)", "nginx.server_name (line 3)"]


def test_errors_are_sorted_by_line_each_with_path_and_line():
    errors = errors_of("gunicorn: {timeout: 0}\nname: 'a b'\ninstances: {base_port: 1}\n")
    assert [e.split(": ")[0] for e in errors] == ["gunicorn.timeout (line 1)", "name (line 2)",
                                                  "instances.base_port (line 3)"]


# ---- 3. hostile files ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "~\n", "null",
                                  "---\n", "--- ~\n"])
def test_a_blank_or_null_spec_is_refused_not_taken_as_all_defaults(text):
    assert "the spec is empty" in one_error(text)


def test_an_explicit_empty_mapping_means_all_defaults():
    assert parse_spec("{}").instances.count == 2


@pytest.mark.parametrize("text,what", [("- a\n- b\n", "got a list"), ("hello\n", "got the scalar 'hello'"),
                                       ("42\n", "got the scalar '42'")])
def test_a_top_level_list_or_scalar_is_refused(text, what):
    msg = one_error(text)
    assert "must be a mapping of sections" in msg and what in msg


def test_a_truncated_file_is_refused(tmp_path):
    f = tmp_path / "fleet.yaml"
    f.write_text("")
    assert "the spec is empty" in file_errors(f)[0]


def test_a_file_over_the_size_cap_is_refused_without_reading_it_all(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_bytes(b"# " + b"x" * MAX_SPEC_BYTES + b"\n")
    assert "larger than 1 MiB" in file_errors(f)[0]
    assert "larger than 1 MiB" in one_error("# " + "x" * MAX_SPEC_BYTES)


@pytest.mark.parametrize("path,kind", [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_devices_are_refused(path, kind):
    assert f"it is {kind}" in file_errors(path)[0]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    # Opening a FIFO nobody writes to blocks for ever: the check returning at all is the event.
    errors: list[str] = []
    check = threading.Thread(target=lambda: errors.extend(file_errors(fifo)), daemon=True)
    check.start()
    check.join(60)
    if check.is_alive():
        with open(fifo, "wb"):   # a writer lets the blocked open return, and the thread end
            pass
        pytest.fail("reading the spec opened the FIFO and blocked")
    assert "it is a FIFO" in errors[0]


def test_a_directory_a_missing_and_an_unreadable_file_are_refused(tmp_path):
    assert "it is a directory" in file_errors(tmp_path)[0]
    assert "No such file or directory" in file_errors(tmp_path / "missing.yaml")[0]
    f = tmp_path / "secret.yaml"
    f.write_text("{}\n")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):
            needs.skip("running as root: every file is readable")
        assert "Permission denied" in file_errors(f)[0]
    finally:
        f.chmod(stat.S_IRUSR | stat.S_IWUSR)


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def nested_alias_bomb(levels: int = 40) -> str:
    """Few aliases, each doubling: about 740 bytes that used to take 11 s."""
    lines = ["x0: &x0 [1, 2]"] + [f"x{i}: &x{i} [*x{i - 1}, *x{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [BILLION_LAUGHS, nested_alias_bomb(), nested_alias_bomb(20)],
                         ids=["billion-laughs", "nested-40", "nested-20"])
def test_alias_bombs_are_refused_quickly(text):
    started = time.thread_time()  # CPU seconds: a busy host stretches wall time, not these
    msg = one_error(text)
    assert time.thread_time() - started < 2
    assert "alias bomb" in msg


@pytest.mark.parametrize("text", ["a: [" + "1," * 400000 + "]\n",
                                  "".join(f"k{i}: 1\n" for i in range(100000))],
                         ids=["long-list", "many-keys"])
def test_a_spec_of_too_many_values_is_refused_quickly(text):
    started = time.thread_time()  # CPU seconds: a busy host stretches wall time, not these
    assert "more than 20000 values: not a spec" in one_error(text)
    assert time.thread_time() - started < 2


def test_a_few_aliases_still_work():
    s = parse_spec("app:\n  env: &env {A: '1'}\ninstances: {count: 2}\n")
    assert s.app.env == {"A": "1"}
    errors = errors_of("a: &p 8002\napi: {port: *p}\n")
    assert any(e.startswith("a (line 1): unknown key") for e in errors)
    assert any("api.port" in e and "8002 is inside the instance ports" in e for e in errors)


def test_a_recursive_alias_is_refused():
    assert "recursive alias" in one_error("a: &a [1, *a]\n")


def test_deep_nesting_is_refused_not_a_recursion_error():
    msg = one_error("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested more than" in msg or "maximum nesting depth" in msg


TAGS_MERGE_KEYS_DUPLICATES = [
    ("app: !!set {a, b}\n", "app (line 1): !!set values are not supported"),
    ("name: !!python/object:os.system x\n", "name (line 1): !!python/object:os.system values are not supported"),
    ("name: !!python/name:os.system ''\n", "!!python/name:os.system values are not supported"),
    ("app: !!python/tuple [a]\n", "!!python/tuple values are not supported"),
    ("name: !custom x\n", "name (line 1): !custom values are not supported"),
    ("name: !!binary aGVsbG8=\n", "!!binary values are not supported"),
    ("base: &b {count: 2}\ninstances:\n  <<: *b\n", "instances.<< (line 3): merge keys"),
    ("instances:\n  count: 2\n  max: 8\n  count: 3\n", "instances.count (line 4): duplicate key (first given on line 2)"),
    ("instances: {count: !!int abc}\n", "instances.count (line 1): 'abc' is not a valid !!int"),
    ("? [a]\n: 1\n", "keys must be plain names"),
    ("---\na: 1\n---\nb: 2\n", "more than one YAML document"),
]


@pytest.mark.parametrize("data,needle", [
    (b"name: caf\xe9\n", "not UTF-8 text: byte 0xe9 on line 1"),
    ("name: demo\n".encode("utf-16"), "not UTF-8 text: it contains NUL bytes"),
    ("name: demo\n".encode("utf-16-le"), "not UTF-8 text: it contains NUL bytes"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "not UTF-8 text"),
    (b"\x89PNG\r\n\x1a\n", "not UTF-8 text"),
])
def test_binary_latin1_and_utf16_files_are_not_utf8_text(tmp_path, data, needle):
    f = tmp_path / "fleet.yaml"
    f.write_bytes(data)
    assert needle in file_errors(f)[0]


def test_utf8_with_a_byte_order_mark_is_fine(tmp_path):
    f = tmp_path / "fleet.yaml"
    f.write_bytes("\ufeffname: demo\n".encode("utf-8"))
    assert load_spec(f).name == "demo"


NAN_INF_HUGE_AND_NON_ASCII_NUMBERS = [
    ("health: {interval: .nan}\n", "health.interval (line 1): must be a finite number, got nan"),
    ("health: {interval: .inf}\n", "health.interval (line 1): must be a finite number, got inf"),
    ("restart: {backoff_max: -.inf}\n", "restart.backoff_max (line 1): must be a finite number"),
    ("alerts: {error_rate: 1.0e+999}\n", "alerts.error_rate (line 1): must be a finite number"),
    ("nginx: {reload_timeout: .nan}\n", "nginx.reload_timeout (line 1): must be a finite number"),
    ("instances: {count: " + "9" * 5000 + "}\n", "instances.count (line 1): a 5000-character number is out of range"),
    ("instances: {count: 99999999999999999999}\n", "instances.count (line 1): must be 0..256, got 999999... (20 digits)"),
    ("instances: {count: \u0663}\n", "instances.count (line 1): must be an integer, got '\u0663'"),
    ("instances: {base_port: \uff18\uff10\uff10\uff11}\n", "must be an integer"),
    ("nginx: {worker_processes: \u0663}\n", "nginx.worker_processes (line 1): must be auto or a number"),
]


ENV_NAMES_AND_NUL = [
    ("app:\n  env: {A=B: x}\n", "app.env (line 2): 'A=B' is not an environment variable name"),
    ("app:\n  env: {1X: x}\n", "'1X' is not an environment variable name"),
    ("app:\n  env: {'': x}\n", "'' is not an environment variable name"),
    ("app:\n  env: {A: \"x\\0y\"}\n", "app.env (line 2): must not contain a NUL character"),
    ("paths: {log_dir: \"/var/log\\0x\"}\n", "paths.log_dir (line 1): must not contain a NUL"),
    ("name: \"a\\0\"\n", "name (line 1): must not contain a NUL character"),
    ("gunicorn: {args: [\"--x\\0\"]}\n", "gunicorn.args (line 1): must not contain a NUL"),
    ("nginx: {reload_command: \"nginx\\0 -s\"}\n", "nginx.reload_command (line 1): must not contain a NUL"),
]


def test_env_values_are_strings():
    assert parse_spec("app: {env: {A_1: 5, _B: true, C: x}}\n").app.env == {"A_1": "5", "_B": "true", "C": "x"}


@pytest.mark.parametrize("key,value", [
    ("server_name", "x; location /pwn { return 200 pwned; }"),
    ("server_name", "a\nb"),
    ("server_name", "'a'"),
    ("listen_host", "127.0.0.1; evil"),
    ("listen_host", "a b"),
    ("stub_status_path", "/s { }"),
    ("stub_status_path", "/s;x"),
    ("stub_status_allow", "127.0.0.1; allow all"),
    ("socketio_path", "/io/ x"),
    ("user", "www-data; daemon off"),
    ("user", "a b c"),
    ("keepalive_timeout", "60s; evil"),
    ("keepalive_timeout", "sixty"),
    ("proxy_read_timeout", "6 0s"),
    ("client_keepalive_timeout", "65s}"),
    ("client_max_body_size", "10m;"),
    ("client_max_body_size", "10 mb"),
    ("proxy_buffers", "16 8k;"),
    ("limit_zone_size", "\uff11\uff10m"),
    ("worker_processes", "auto; evil"),
    ("error_log_level", "warn;"),
    ("access_log", "logs/a.log; evil"),
    ("tls_protocols", "TLSv1.2; evil"),
    ("proxy_next_upstream", "error; evil"),
    ("upstream_file", "/etc/x.conf; evil"),
    ("tls_cert", "/c.pem {"),
    ("upstream_name", "\u00fcber"),
])
def test_nginx_settings_cannot_inject_nginx_syntax(key, value):
    text = f"nginx:\n  {key}: {json.dumps(value)}\n"
    errors = errors_of(text)
    assert any(e.startswith(f"nginx.{key} (line 2):") for e in errors), errors


def test_ordinary_nginx_values_are_accepted():
    s = parse_spec("nginx:\n  server_name: example.com www.example.com\n  listen_host: '*'\n"
                   "  user: www-data www-data\n  keepalive_timeout: 1m30s\n"
                   "  client_keepalive_timeout: 65s 60s\n  stub_status_allow: 127.0.0.1 10.0.0.0/8\n"
                   "  worker_processes: 2\n  proxy_next_upstream: error timeout non_idempotent\n"
                   "gunicorn: {keepalive: 95}\n")
    assert s.nginx.server_name == "example.com www.example.com"


HOSTS_PORTS_PATHS_AND_MODULE = [
    ("api: {port: 8080}\n", "api.port (line 1): 8080 is also nginx.listen"),
    ("nginx: {listen: 8004}\n", "nginx.listen (line 1): 8004 is inside the instance ports 8001..8008"),
    ("nginx: {mode: system, upstream_file: /etc/nginx/u.conf, listen: 8001}\n",
     "nginx.listen (line 1): 8001 is inside the instance ports"),
    ("health: {path: health}\n", "health.path (line 1): must start with /"),
    ("health: {path: \"/h\\r\\nX-Evil: 1\"}\n", "health.path (line 1): must start with / and hold no spaces, CR/LF"),
    ("health: {path: /a b}\n", "health.path (line 1)"),
    ("instances: {host: '127.0.0.1; rm'}\n", "instances.host (line 1): must be an IP address or a host name"),
    ("api: {host: 'local host', token_file: /etc/hostname}\n", "api.host (line 1): must be an IP address"),
    ("app: {module: app.wsgi}\n", "app.module (line 1): must look like `module:callable`"),
    ("app: {module: '--config=/x:app'}\n", "app.module (line 1): must look like"),
    ("app: {module: '-c:app'}\n", "app.module (line 1)"),
    ("api: {token_file: /nonexistent/token}\n", "api.token_file (line 1): /nonexistent/token does not exist"),
    ("api: {token_file: /}\n", "api.token_file (line 1): / is a directory"),
]


@pytest.mark.parametrize("text,needle", TAGS_MERGE_KEYS_DUPLICATES + NAN_INF_HUGE_AND_NON_ASCII_NUMBERS
                         + ENV_NAMES_AND_NUL + HOSTS_PORTS_PATHS_AND_MODULE)
def test_each_hostile_value_is_refused_naming_key_line_and_reason(text, needle):
    errors = errors_of(text)
    assert any(needle in e for e in errors), errors


@pytest.mark.parametrize("module", ["app.wsgi:application", "app:create_app()", "a.b.c:make_app('x', 1)",
                                    "wsgi:app.server"])
def test_ordinary_app_modules_are_accepted(module):
    assert parse_spec(f"app: {{module: \"{module}\"}}\n").app.module == module


def test_an_existing_token_file_is_accepted(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    f = tmp_path / "fleet.yaml"
    f.write_text("api: {host: 0.0.0.0, token_file: token}\n")
    assert load_spec(f).api.token_file == str(token)


def test_reload_and_start_read_the_file_the_same_way(tmp_path):
    """load_spec is the one reader: a hostile file given to it is refused the same way."""
    f = tmp_path / "fleet.yaml"
    f.write_text(BILLION_LAUGHS)
    assert "alias bomb" in file_errors(f)[0]
    assert file_errors(f)[0].startswith(str(f))


@pytest.mark.parametrize("args,needle", [
    (["--bind", "0.0.0.0:18097"], "--bind is set by the daemon; use instances.host and instances.base_port"),
    (["--bind=0.0.0.0:1"], "--bind is set by the daemon"),
    (["-b0.0.0.0:1"], "-b is set by the daemon"),
    (["--fd", "3"], "--fd is set by the daemon"),
    (["--reuse-port"], "--reuse-port is set by the daemon"),
    (["--pid", "/etc/passwd"], "--pid is set by the daemon"),
    (["-n", "other"], "-n is set by the daemon; use name"),
    (["--daemon"], "--daemon is set by the daemon"),
    (["-D"], "-D is set by the daemon"),
    (["--chdir", "/"], "--chdir is set by the daemon; use app.directory"),
    (["-k", "gevent"], "-k is set by the daemon; use gunicorn.worker_class"),
    (["--workers=9"], "--workers is set by the daemon; use gunicorn.workers"),
    (["--user", "root"], "--user is set by the daemon"),
    (["-g", "root"], "-g is set by the daemon"),
    (["-c", "x.py"], "-c is set by the daemon; use app.config"),
    (["--timeout", "5"], "--timeout is set by the daemon; use gunicorn.timeout"),
    (["--error-logfile", "/etc/passwd"], "--error-logfile is set by the daemon"),
    (["x", "x"], "'x' is a positional argument, which gunicorn would take for the app"),
])
def test_gunicorn_args_that_the_daemon_owns_are_refused_with_what_to_use(args, needle):
    with pytest.raises(SpecError) as e:
        parse_spec(f"gunicorn: {{args: {args!r}}}\n")
    assert needle in str(e.value) and "gunicorn.args (line 1)" in str(e.value)


@pytest.mark.parametrize("args", [["--log-level", "debug"], ["--forwarded-allow-ips", "*"], ["--preload"],
                                  ["--limit-request-line=8190"], ["--proxy-protocol"]])
def test_gunicorn_args_the_spec_does_not_cover_are_kept(args):
    assert parse_spec(f"gunicorn: {{args: {args!r}}}\n").gunicorn.args == args
