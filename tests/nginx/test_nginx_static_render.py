"""nginx.static, the MIME types and the proxy locations' error_log: validation (through the
spec loader, errors naming the key) and rendering (pure)."""
import os
import stat
from pathlib import Path

import pytest

from ultrascaled.effects.nginx_control import find_mime_types
from ultrascaled.effects.nginx_render import render_main_conf, render_site_conf
from ultrascaled.spec import SpecError, parse_spec
from ultrascaled.spec.nginx import NginxSettings, validate

BASE = Path("/srv/fleet")


def spec(text):
    return parse_spec(text, base_dir=BASE, cpu_count=2)


def errors_of(text):
    with pytest.raises(SpecError) as info:
        spec(text)
    return info.value.errors


def static(s):
    return f"nginx:\n  static: {s}\n"


def test_the_loader_gives_nginx_the_app_folder_and_the_current_link():
    s = spec("app: {directory: /srv/mysite}\npaths: {state_dir: /var/lib/us}\n"
             + static('{"/static/": staticfiles}')).nginx
    assert s.static == {"/static/": "staticfiles"}
    assert (s.static_app_dir, s.static_current) == ("/srv/mysite", "/var/lib/us/releases/current")
    s = spec("deploy: {releases_dir: rel}\n" + static('{"/static/": staticfiles}')).nginx
    assert s.static_current == "/srv/fleet/rel/current"
    assert spec("{}").nginx.static == {} and spec("{}").nginx.static_app_dir == ""


@pytest.mark.parametrize("value, needle", [
    ('{"static/": s}', "'static/': a URL prefix must start and end with /"),
    ('{"/static": s}', "'/static': a URL prefix must start and end with /"),
    ('{"/st atic/": s}', "a URL prefix must start and end with /"),
    ('{"/": s}', "'/': the prefix / would take every request"),
    ('{"/a/../": s}', "must not hold . or .. segments"),
    ('{"/static/": s, "/static/admin/": t}', "'/static/admin/' is inside '/static/': prefixes must not nest"),
    ('{"/static/": ../elsewhere}', "must stay inside the app folder (no ..)"),
    ('{"/static/": a/../../b}', "must stay inside the app folder (no ..)"),
    ('{"/static/": /var/www/static}', "must be relative to the app folder"),
    ('{"/static/": .}', "is the app folder itself, which would serve its source code"),
    ('{"/static/": "./"}', "is the app folder itself"),
    ('{"/static/": "a b"}', "must hold only letters, digits"),
    ('{"/static/": "a;b"}', "must hold only letters, digits"),
    ('{"/static/": ""}', "the folder must be a path relative to the app folder"),
    ('{"/static/": 3}', "the folder must be a path relative to the app folder"),
    ('{"/nginx_status/": s}', "'/nginx_status/' overlaps nginx.stub_status_path"),
    ('{"/socket.io/": s}', "overlaps nginx.socketio_path"),
    ("[/static/]", "must be a mapping"),
])
def test_bad_static_settings_are_refused_naming_the_key(value, needle):
    errs = errors_of(static(value))
    assert any(e.startswith("nginx.static (line 2): ") and needle in e for e in errs), errs


def test_a_prefix_covering_the_health_path_is_refused():
    errs = errors_of("health: {path: /static/ping}\n" + static('{"/static/": s}'))
    assert any(e.startswith("nginx.static (line 3)") and "covers health.path (/static/ping)" in e
               for e in errs), errs
    spec("health: {path: /staticping}\n" + static('{"/static/": s}'))   # not under the prefix


def test_duplicate_prefixes_are_refused_by_the_reader():
    errs = errors_of('nginx:\n  static:\n    /static/: a\n    /static/: b\n')
    assert any("duplicate key" in e for e in errs), errs


def test_static_max_age_is_an_nginx_time_or_off():
    assert "nginx.static_max_age (line 2): must be an nginx time" in \
        " ".join(errors_of("nginx:\n  static_max_age: forever\n"))
    assert spec("nginx: {static_max_age: 365d}\n").nginx.static_max_age == "365d"
    assert spec("nginx: {static_max_age: off}\n").nginx.static_max_age == "off"   # YAML's false


def test_the_app_folder_path_must_be_safe_for_nginx():
    errs = errors_of("app: {directory: '/srv/my site'}\n" + static('{"/static/": s}'))
    assert any("nginx.static" in e and "app.directory" in e and "spaces" in e for e in errs), errs


S = NginxSettings(prefix="/srv/n", static={"/static/": "staticfiles/", "/v1.2/": "a/b"},
                  static_app_dir="/srv/app", static_current="/srv/rel/current")


def test_static_locations_are_rendered_before_the_proxy_and_in_system_mode():
    text = render_main_conf(S).decode()
    assert text.index("location ^~ /static/ {") < text.index("location / {")
    block = text[text.index("location ^~ /static/ {"):text.index("location / {")]
    assert "location ~ ^/static/(.*)$ {" in block
    assert "set $ultrascale_static /srv/app;" in block
    assert "if (-d /srv/rel/current) { set $ultrascale_static /srv/rel/current; }" in block
    assert "alias $ultrascale_static/staticfiles/$1;" in block
    assert "expires 1h;" in block and "log_not_found off;" in block
    assert "access_log off;" in block          # not in the traffic log: figures are the fleet's
    assert "proxy_pass" not in block and "_ready" not in block   # served with no instance ready
    assert r"location ~ ^/v1\.2/(.*)$ {" in text and "alias $ultrascale_static/a/b/$1;" in text
    site = render_site_conf(NginxSettings(mode="system", upstream_file="/etc/u.conf", static=S.static,
                                          static_app_dir="/srv/app", static_current="/srv/rel/current"))
    assert b"location ^~ /static/ {" in site
    assert validate(S) == []


def test_static_options():
    import dataclasses
    off = render_main_conf(dataclasses.replace(S, static_max_age="off")).decode()
    assert "expires" not in off
    logged = render_main_conf(dataclasses.replace(S, access_log="logs/access.log")).decode()
    block = logged[logged.index("location ^~ /static/"):logged.index("location / {")]
    assert "access_log /srv/n/logs/access.log;" in block
    assert "location ^~" not in render_main_conf(NginxSettings(prefix="/srv/n")).decode()
    assert any("app folder is unknown" in e
               for e in validate(NginxSettings(prefix="/srv/n", static={"/s/": "s"})))


def test_mime_types_are_always_in_the_managed_config():
    inc = render_main_conf(S, mime_types="/etc/nginx/mime.types").decode()
    assert "    include /etc/nginx/mime.types;\n" in inc and "types {" not in inc
    assert inc.index("include /etc/nginx/mime.types;") < inc.index("server {")
    assert "# MIME types: nginx's own list (/etc/nginx/mime.types)" in inc
    own = render_main_conf(S).decode()
    assert "types {" in own and "text/css css;" in own and "text/javascript js mjs;" in own
    assert own.count("# MIME types:") == 1
    # the system nginx's own nginx.conf includes mime.types at http level
    assert b"types" not in render_site_conf(NginxSettings(mode="system", upstream_file="/etc/u.conf"))


def test_find_mime_types_reads_the_conf_path_nginx_was_built_with(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "mime.types").write_text("types { text/css css; }\n")
    fake = tmp_path / "nginx"
    fake.write_text(f"#!/bin/sh\necho 'configure arguments: --conf-path={tmp_path}/etc/nginx.conf' >&2\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert find_mime_types(str(fake)) == f"{tmp_path}/etc/mime.types"
    built = tmp_path / "local" / "sbin"
    built.mkdir(parents=True)
    (tmp_path / "local" / "conf").mkdir()
    (tmp_path / "local" / "conf" / "mime.types").write_text("")
    assert find_mime_types(str(built / "nginx")) == f"{tmp_path}/local/conf/mime.types"  # not runnable
    found = find_mime_types(str(tmp_path / "missing" / "nginx"))
    assert found is None or os.path.isfile(found)   # the usual places of this machine


def test_proxy_locations_keep_the_tries_of_closed_ports_out_of_the_error_log():
    text = render_main_conf(NginxSettings(prefix="/srv/n")).decode()
    assert text.count("        error_log /srv/n/logs/error.log crit;\n") == 2   # / and socket.io
    assert "error_log /srv/n/logs/error.log warn;" in text                   # the rest: warn
    ready = render_main_conf(NginxSettings(prefix="/srv/n", upstream_servers="ready")).decode()
    assert ready.count("error_log") == 1
    same = render_main_conf(NginxSettings(prefix="/srv/n", proxy_error_log_level="warn")).decode()
    assert same.count("error_log") == 1
    shown = render_main_conf(NginxSettings(prefix="/srv/n", proxy_error_log_level="error")).decode()
    assert shown.count("error_log /srv/n/logs/error.log error;") == 2
    system = render_site_conf(NginxSettings(mode="system", upstream_file="/etc/u.conf")).decode()
    assert system.count("error_log /var/log/nginx/ultrascale.error.log crit;") == 2
    assert "nginx.proxy_error_log_level (line 2): must be '' or one of" in \
        " ".join(errors_of("nginx:\n  proxy_error_log_level: loud\n"))
