"""The path rule (ultrascaled/spec/path_rule.py): every path the daemon, nginx or gunicorn write
to stays out of system locations, is what it should be where it exists, and a symlink is judged
by where it leads; examples as a table, then hypothesis generating paths and gunicorn.args."""
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ultrascaled.spec import SpecError, parse_spec
from ultrascaled.spec.path_rule import SHARED_PARENTS, SYSTEM_TREES, lexical_problem
from ultrascaled.spec.validate import OWNED_ARGS, written_paths


def errors_of(text: str) -> list[str]:
    try:
        parse_spec(text, base_dir=Path("/srv/fleet"))
    except SpecError as exc:
        return exc.errors
    return []


@pytest.mark.parametrize("text,key,needle", [
    ("nginx: {access_log: /etc/passwd}", "nginx.access_log (line 1)", "/etc/passwd is under /etc"),
    ("nginx: {access_log: ../../../../etc/cron.d/x}", "nginx.access_log (line 1)", "is under /etc"),
    ("nginx: {traffic_log: /proc/self/mem}", "nginx.traffic_log (line 1)", "under /proc"),
    ("nginx: {traffic_log: /dev/sda}", "nginx.traffic_log (line 1)", "under /dev"),
    ("nginx: {prefix: /usr/local/nginx}", "nginx.prefix (line 1)", "under /usr"),
    ("nginx: {upstream_file: /etc/nginx/conf.d/u.conf}", "nginx.upstream_file (line 1)", "under /etc"),
    ("nginx: {mode: system, upstream_file: /etc/u.conf}", "nginx.upstream_file (line 1)",
     "may also write under /etc/nginx/"),
    ("nginx: {mode: system, upstream_file: /etc/nginx/u.conf, access_log: /var/log/auth.log}",
     "nginx.access_log (line 1)", "directly in /var/log"),   # a system log is not under /var/log/nginx
    ("nginx: {access_log: /tmp/access.log}", "nginx.access_log (line 1)", "directly in /tmp"),
    ("nginx: {mode: system, upstream_file: /etc/nginx/u.conf, access_log: /etc/nginx/a.log}",
     "nginx.access_log (line 1)", "under /etc"),          # the /etc/nginx exception is the upstream file's
    ("nginx: {mode: system, upstream_file: /etc/nginx, traffic_log: off}", "nginx.upstream_file (line 1)",
     "under /etc"),                                       # the exception's folder itself is not a file
    ("paths: {state_dir: /var/lib}", "paths.state_dir (line 1)", "a shared system folder"),
    ("paths: {state_dir: /}", "paths.state_dir (line 1)", "a shared system folder"),
    ("paths: {state_dir: /root/fleet}", "paths.state_dir (line 1)", "under /root"),
    ("paths: {log_dir: /var/log/journal/x}", "paths.log_dir (line 1)", "under /var/log/journal"),
    ("paths: {log_dir: /boot}", "paths.log_dir (line 1)", "under /boot"),
    ("deploy: {releases_dir: /var/lib/dpkg/r}", "deploy.releases_dir (line 1)", "under /var/lib/dpkg"),
    ('gunicorn: {args: ["--access-logfile", "/etc/shadow"]}', "gunicorn.args (line 1)",
     "--access-logfile /etc/shadow is under /etc"),
    ('gunicorn: {args: ["--worker-tmp-dir=/sys/x"]}', "gunicorn.args (line 1)", "--worker-tmp-dir /sys/x"),
    ('gunicorn: {args: ["--access-logfile", "/tmp"]}', "gunicorn.args (line 1)", "/tmp is a system folder"),
])
def test_a_written_path_in_a_system_location_is_refused_naming_key_and_rule(text, key, needle):
    errors = errors_of(text)
    hit = [e for e in errors if e.startswith(key + ":")]
    assert hit and needle in hit[0] and "the path rule" in hit[0], errors


@pytest.mark.parametrize("text", [
    "paths: {state_dir: /var/lib/ultrascaled/shop, log_dir: /var/log/ultrascaled/shop}",
    "paths: {state_dir: /srv/shop/state, log_dir: /tmp/shop-logs}",
    "nginx: {access_log: logs/access.log}",
    "nginx: {access_log: /srv/logs/shop.access.log}",
    "nginx: {mode: system, upstream_file: /etc/nginx/ultrascale/upstream.conf, "
    "access_log: /var/log/nginx/shop.access.log, traffic_log: /var/log/nginx/shop.traffic.log}",
    'gunicorn: {args: ["--access-logfile", "-", "--worker-tmp-dir", "/dev/shm/shop"]}',
])
def test_ordinary_written_paths_are_accepted(text):
    text = text.replace("/dev/shm/shop", "/run/shm-shop")  # /dev is a system tree, /dev/shm too
    assert not [e for e in errors_of(text) if "path rule" in e], errors_of(text)


def test_a_symlink_is_judged_by_where_it_leads(tmp_path):
    (tmp_path / "to-etc").symlink_to("/etc")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.log").symlink_to("/etc/passwd")
    (tmp_path / "ok").mkdir()
    (tmp_path / "link-ok").symlink_to(tmp_path / "ok")
    errors = errors_of(f"paths: {{state_dir: {tmp_path}/to-etc/fleet}}\n"
                       f"nginx: {{access_log: {tmp_path}/logs/a.log}}\n")
    state = [e for e in errors if e.startswith("paths.state_dir")]
    log = [e for e in errors if e.startswith("nginx.access_log")]
    assert state and "leads to /etc/fleet, which is under /etc" in state[0], errors
    assert log and "leads to /etc/passwd" in log[0], errors
    # the defaulted nginx prefix and logs inside the refused state folder are not reported again
    assert not [e for e in errors if e.startswith(("nginx.prefix", "nginx.traffic_log"))], errors
    assert not [e for e in errors_of(f"paths: {{state_dir: {tmp_path}/link-ok/state}}") if "path rule" in e]


def test_an_existing_target_must_be_of_the_kind_meant(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    errors = errors_of(f"nginx: {{access_log: {tmp_path}/fifo}}\npaths: {{log_dir: {tmp_path}/file}}\n")
    assert any(e.startswith("nginx.access_log") and "exists and is not a regular file" in e for e in errors)
    assert any(e.startswith("paths.log_dir") and "exists and is not a folder" in e for e in errors)


def test_a_relative_system_mode_access_log_is_refused():
    errors = errors_of("nginx: {mode: system, upstream_file: /etc/nginx/u.conf, access_log: a.log}")
    assert any("nginx.access_log (line 1): must be an absolute path in system mode" in e for e in errors)


def test_reload_is_checked_the_same_way(tmp_path):
    """The API's reload and SIGHUP read the file with load_spec, like the start and --check."""
    from ultrascaled.spec import load_spec
    f = tmp_path / "fleet.yaml"
    f.write_text("nginx: {access_log: /etc/passwd}\n")
    with pytest.raises(SpecError) as info:
        load_spec(f)
    assert any("nginx.access_log" in e and "path rule" in e for e in info.value.errors)


# ---- hypothesis: whatever paths and arguments a spec names, an accepted one writes nowhere
# in the system ---------------------------------------------------------------------------
parts = st.sampled_from(["etc", "usr", "var", "lib", "log", "nginx", "tmp", "srv", "..", ".", "x",
                         "proc", "dev", "root", "boot", "passwd", "journal", "dpkg", "run", ""])
paths = st.builds(lambda absolute, ps: ("/" if absolute else "") + "/".join(ps),
                  st.booleans(), st.lists(parts, min_size=0, max_size=5))
flags = st.sampled_from(["--access-logfile", "--error-logfile", "--log-file", "--worker-tmp-dir",
                         "--bind", "-b", "--pid", "--chdir", "-c", "--log-level", "--preload", "x"])


@st.composite
def path_specs(draw):
    nginx = {"mode": draw(st.sampled_from(["managed", "system", "off"]))}
    for key in draw(st.lists(st.sampled_from(["access_log", "traffic_log", "upstream_file", "prefix"]),
                             unique=True, max_size=4)):
        nginx[key] = draw(paths)
    doc = {"nginx": nginx, "paths": {k: draw(paths) for k in draw(
        st.lists(st.sampled_from(["state_dir", "log_dir"]), unique=True, max_size=2))}}
    if draw(st.booleans()):
        doc["deploy"] = {"releases_dir": draw(paths)}
    args = []
    for _ in range(draw(st.integers(0, 3))):
        flag = draw(flags)
        args += [flag] if flag in ("--preload", "x") else (
            [f"{flag}={draw(paths)}"] if draw(st.booleans()) else [flag, draw(paths)])
    if args:
        doc["gunicorn"] = {"args": args}
    return yaml.safe_dump(doc)


def in_system(path: str) -> bool:
    return any(path == t or path.startswith(t + "/") for t in SYSTEM_TREES)


@settings(max_examples=100, deadline=None, database=None)
@given(path_specs())
def test_an_accepted_spec_writes_nowhere_in_the_system(text):
    try:
        spec = parse_spec(text, base_dir=Path("/srv/fleet"))
    except SpecError as exc:
        assert not any("internal error" in e for e in exc.errors), exc.errors
        return
    owned = {flag for flags in OWNED_ARGS for flag in flags}
    assert not [a for a in spec.gunicorn.args if a.split("=")[0] in owned]
    for key, _, path, folder, exception in written_paths(spec):
        full = os.path.realpath(os.path.join(spec.app.directory, path))
        if exception and full.startswith(exception + "/"):
            continue
        assert not in_system(full), (key, full, text)
        assert full not in SHARED_PARENTS, (key, full, text)
        assert folder or os.path.dirname(full) not in SHARED_PARENTS, (key, full, text)


def test_lexical_rule_examples():
    assert lexical_problem("/etc", True) == "is under /etc, a system location"
    assert lexical_problem("/etcetera/x", False) is None       # a prefix of a name is not a folder
    assert lexical_problem("/etc/nginx/u.conf", False, "/etc/nginx") is None
    assert lexical_problem("/etc/nginx", False, "/etc/nginx") is not None
