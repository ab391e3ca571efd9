"""What a pod would run, run for real: the exported container's command, arguments and
environment start real gunicorn with the reference app (etc/ultrascaled/fleet.yaml and
large.yaml) or a fresh Django project on sync workers (django-sync.yaml); the startup probe's path answers within
the startup budget; SIGTERM (what the kubelet sends after the preStop sleep) lets an in-flight
request finish and the pod exit within terminationGracePeriodSeconds. The schemas cannot check
any of this. Bound to 127.0.0.1 instead of the pod's 0.0.0.0; everything started is ended by its
process group, also when the test fails."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ultrascaled.export import kube
from ultrascaled.spec import load_spec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The app-tier variables a developer's shell may hold: the pod's come from the manifests only.
APP_ENV = ("REDIS_URL", "MONGODB_URI", "CACHE_TTL", "PROMETHEUS_MULTIPROC_DIR", "PORT",
           "ULTRASCALE_PORT", "ULTRASCALE_INSTANCE", "ULTRASCALE_TEST_ENDPOINTS",
           "GUNICORN_CMD_ARGS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def pod_command(ex: kube.Export, tmp_path: Path) -> tuple[list[str], dict[str, str], int, dict]:
    """argv, environment and port of the Deployment's container, as a kubelet would run it
    (the ConfigMap through envFrom, then the container's env), on a free loopback port."""
    objs = {m["kind"]: m for m in ex.manifests}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    port = free_port()
    args = list(c["args"])
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV}
    env.update(objs["ConfigMap"]["data"])
    env.update({e["name"]: e["value"] for e in c["env"]})
    env.pop("REDIS_URL", None)  # the app serves from memory; no one else's Redis is touched
    metrics = tmp_path / "metrics"  # the emptyDir
    metrics.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    assert c["command"] == ["sh", "-c", kube.RAISE_NOFILE, "gunicorn"]
    script = kube.RAISE_NOFILE.replace("exec python", f"exec {sys.executable}")
    return ["sh", "-c", script, "gunicorn", *args], env, port, pod


def django_project(root: Path) -> Path:
    """`django-admin startproject mysite` as etc/ultrascaled/django-sync.yaml expects it, with
    its /healthz and a slow view; the project folder is what the image's WORKDIR would be."""
    root.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)],
                   check=True, capture_output=True, timeout=60)
    settings = root / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace("ALLOWED_HOSTS = []",
                                                     'ALLOWED_HOSTS = ["127.0.0.1"]')
                        .replace("DEBUG = True", "DEBUG = False"))
    urls = root / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + textwrap.dedent("""
        import time
        from django.http import JsonResponse

        def slow(request):
            time.sleep(int(request.GET.get("ms", "0")) / 1000)
            return JsonResponse({"status": "ok"})

        urlpatterns += [path("healthz", lambda r: JsonResponse({"status": "ok"})),
                        path("io", slow)]
        """))
    return root


@pytest.mark.parametrize("spec_name", ["fleet", "large", "django-sync"])
def test_the_exported_container_serves_drains_and_stops_in_its_grace_period(spec_name, tmp_path):
    spec = load_spec(ROOT / "etc" / "ultrascaled" / f"{spec_name}.yaml",
                     cpu_count=kube.EXPORT_CPU_COUNT)
    ex = kube.export(spec, kube.Options(nofile=65536))
    workdir = django_project(tmp_path / "shop") if spec_name == "django-sync" else ROOT
    argv, env, port, pod = pod_command(ex, tmp_path)
    c = pod["containers"][0]
    startup = c["startupProbe"]
    proc = subprocess.Popen(argv, cwd=workdir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "wb"))
    try:
        # The startup probe: its path every periodSeconds, failureThreshold times at most.
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while get(port, startup["httpGet"]["path"], timeout=startup["timeoutSeconds"])[0] != 200:
            assert proc.poll() is None, (tmp_path / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, "not ready within the startup probe's budget"
            time.sleep(0.2)
        status, body = get(port, c["livenessProbe"]["httpGet"]["path"])
        assert status == 200 and body["status"] == "ok"

        # A request in flight when the pod is told to stop must still be answered.
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(get(port, "/io?ms=1500")[0]))
        slow.start()
        time.sleep(0.5)  # let it reach a worker; the assertion below does not depend on timing
        os.kill(proc.pid, signal.SIGTERM)  # after the preStop sleep, the kubelet's SIGTERM
        grace = pod["terminationGracePeriodSeconds"] - c["lifecycle"]["preStop"]["sleep"]["seconds"]
        # the kubelet's own deadline, a wait for the exit (TimeoutExpired past it): no stopwatch on top
        proc.wait(timeout=grace)
        slow.join(10)
        assert answers == [200], (answers, (tmp_path / "log").read_text()[-2000:])
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
