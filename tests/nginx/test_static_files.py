"""`nginx.static` and the MIME types with a real managed nginx: a .css under the static prefix
is served by nginx itself as text/css with the cache headers, from app.directory until a release
is current and then from the `current` link, which a deploy switches without a reload; files
served by `extra_server` get their types too."""
import asyncio
import os
import pwd
import urllib.request

import pytest

from nginx_helpers import free_port, nginx_pids_of_prefix, nginx_prefix  # noqa: F401
from ultrascaled.effects.nginx_control import NginxController
from ultrascaled.spec.nginx import NginxSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def fetch(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def worker_user() -> str:
    """Run as root, nginx's workers would be `nobody`, who cannot read pytest's tmp folders (a
    real deployment must let the workers' user read the static folders: docs/nginx.md)."""
    return pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else ""


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize("mime_types", [True, None], ids=["nginx-mime.types", "built-in-types"])
def test_static_prefix_follows_the_current_release_without_a_reload(nginx_prefix, tmp_path, mime_types):
    app, releases = tmp_path / "app", tmp_path / "releases"
    write(app / "staticfiles" / "css" / "site.css", "body { color: red }")
    write(app / "staticfiles" / "app.js", "let a = 1;")
    write(releases / "r1" / "staticfiles" / "css" / "site.css", "body { color: green }")
    write(tmp_path / "extra" / "x.css", "p {}")
    write(app / "settings.py", "SECRET_KEY = 'x'")
    s = NginxSettings(prefix=nginx_prefix, listen=free_port(), worker_processes="1",
                      worker_connections=64, user=worker_user(), reload_timeout=5, start_timeout=8, stop_timeout=5,
                      static={"/static/": "staticfiles"}, static_max_age="2h",
                      static_app_dir=str(app), static_current=str(releases / "current"),
                      extra_server=f"location /extra/ {{ alias {tmp_path}/extra/; }}")
    ctl = NginxController(s, mime_types=mime_types)   # True: found beside nginx; None: inline
    assert asyncio.run(ctl.start([])).ok   # no instance at all: nginx alone answers
    try:
        port = s.listen
        workers = set(nginx_pids_of_prefix(nginx_prefix))
        status, headers, body = fetch(port, "/static/css/site.css")
        assert (status, body) == (200, b"body { color: red }")
        assert headers["Content-Type"] == "text/css"
        assert headers["Cache-Control"] == "max-age=7200" and "Expires" in headers
        assert fetch(port, "/static/app.js")[1]["Content-Type"] in ("application/javascript",
                                                                   "text/javascript")
        for path in ("/static/../settings.py", "/static/%2e%2e/settings.py"):
            status, _, body = fetch(port, path)   # nginx normalises: /settings.py, proxied
            assert status == 503 and b"SECRET_KEY" not in body
        assert fetch(port, "/static/nope.css")[0] == 404
        assert fetch(port, "/")[0] == 503          # the proxied part has no instance
        # the original report: a file of extra_server's alias was application/octet-stream
        assert fetch(port, "/extra/x.css")[1]["Content-Type"] == "text/css"

        os.symlink("r1", releases / "current")     # a deploy completes (point_current)
        assert fetch(port, "/static/css/site.css")[2] == b"body { color: green }"
        os.unlink(releases / "current")            # back on app.directory
        assert fetch(port, "/static/css/site.css")[2] == b"body { color: red }"
        assert ctl.reload_count == 0 and set(nginx_pids_of_prefix(nginx_prefix)) == workers
        conf = open(s.conf_path).read()
        if mime_types:
            assert "include /etc/nginx/mime.types;" in conf or "types {" in conf
        else:
            assert "types {" in conf and "include /etc/nginx/mime.types" not in conf
    finally:
        asyncio.run(ctl.stop())
