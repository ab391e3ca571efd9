"""`ultrascalectl export kubernetes`: golden files, the official schemas of the two newest
Kubernetes minor versions kubernetes-validate ships, where every spec key goes, the budgets'
verdict, bad input, and the command itself. No cluster: the schemas are the check.

Regenerate the golden files after an intended change with
`ULTRASCALE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/kube -q` and read the diff."""
from __future__ import annotations

import dataclasses
import re
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ultrascaled.surface import cli
from ultrascaled.export import kube
from ultrascaled.spec import iter_settings, load_spec, parse_spec
from ultrascaled.spec.schema import JOB_ONLY, ProcessType, QueueAutoscale, QueueSource

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
ETC = ROOT / "etc" / "ultrascaled"

# spec file -> the export's options for its golden file
CASES = {
    "fleet": kube.Options(),
    "django-sync": kube.Options(image="registry.example.com/shop:2026.11.30", cpu_per_worker="500m"),
    "large": kube.Options(image="registry.example.com/ultrascale-app:1.4.0", namespace="ultrascale",
                          mongo_servers=3),
}


def load(name: str):
    return load_spec(ETC / f"{name}.yaml", cpu_count=kube.EXPORT_CPU_COUNT)


@functools.lru_cache(maxsize=None)
def exported(name: str) -> kube.Export:
    return kube.export(load(name), CASES[name])


# ---- golden files ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_the_export_of_each_spec_in_etc_matches_its_golden_file(name):
    text = kube.render_stream(exported(name))
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("ULTRASCALE_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs: regenerate it (module docstring) and review"


def test_every_spec_in_etc_has_a_golden_file():
    assert sorted(p.stem for p in ETC.glob("*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_the_stream_reads_back_as_the_manifests(name):
    ex = exported(name)
    docs = list(yaml.safe_load_all(kube.render_stream(ex)))
    assert docs == ex.manifests  # the header is comments only: no empty document
    for m in ex.manifests:  # annotation values must be strings: `on`, `off`, numbers quoted
        for v in m["metadata"].get("annotations", {}).values():
            assert isinstance(v, str)


def test_the_output_does_not_depend_on_the_machine_or_the_run():
    text = kube.render_stream(kube.export(load("fleet")))
    assert text == kube.render_stream(kube.export(load("fleet")))
    assert str(ROOT) not in text and "/work" not in text  # no host paths (app.directory)


# ---- the official schemas -------------------------------------------------------------------

def newest_minor_versions(n: int = 2) -> list[str]:
    from kubernetes_validate.utils import all_versions, major_minor
    minors = {major_minor(v) for v in all_versions()}
    return sorted(minors, key=lambda v: tuple(map(int, v.split("."))))[-n:]


@pytest.fixture(scope="module")
def validate():
    """kubernetes_validate.validate, strict (unknown fields are errors), with the schema files
    read once instead of on every call (1.8 MB of definitions per version)."""
    import kubernetes_validate
    from kubernetes_validate import utils
    original = utils.schema_contents
    utils.schema_contents = functools.lru_cache(maxsize=None)(original)
    try:
        yield lambda obj, version: kubernetes_validate.validate(obj, version, strict=True)
    finally:
        utils.schema_contents = original


def test_the_two_newest_kubernetes_versions_are_the_ones_checked():
    versions = newest_minor_versions()
    assert len(versions) == 2 and versions[0] != versions[1]
    major, minor = map(int, versions[-1].split("."))
    assert (major, minor) >= (1, 36), versions  # kubernetes-validate>=1.36 in pyproject.toml


@pytest.mark.parametrize("name", CASES)
def test_every_object_validates_against_the_two_newest_kubernetes_schemas(name, validate):
    ex = exported(name)
    kinds = {m["kind"] for m in ex.manifests}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Ingress"} <= kinds
    assert ("HorizontalPodAutoscaler" in kinds) == load(name).autoscale.enabled
    for version in newest_minor_versions():
        for m in ex.manifests:
            assert validate(m, version) == version, (m["kind"], version)


def test_the_schema_check_catches_a_wrong_field(validate):
    """The check can fail: a misspelt field and a wrong type are refused."""
    from kubernetes_validate.utils import ValidationError
    dep = exported("fleet").manifests[1]
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(ValidationError):
        validate(bad, newest_minor_versions()[-1])
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["replicas"] = "2"
    with pytest.raises(ValidationError):
        validate(bad, newest_minor_versions()[-1])


def test_the_export_with_every_optional_part_on_validates(validate):
    """TLS with hosts, rate and connection limits, gthread, a namespace, Socket.IO: one spec."""
    spec = parse_spec(
        "name: Full_Fleet\ngunicorn: {workers: 3, worker_class: gthread, threads: 8, "
        "worker_connections: 100}\n"
        "nginx: {server_name: a.example.com .example.org, tls_cert: /c.pem, tls_key: /k.pem, "
        "rate_limit: 7, rate_limit_burst: 50, conn_limit: 9, balance: random}\n"
        "instances: {count: 1, min: 1, max: 3}\nautoscale: {enabled: true}\n"
        "deploy: {release_command: [python, manage.py, migrate, --noinput], release_timeout: 120}\n",
        base_dir=Path("/srv"), cpu_count=2)
    ex = kube.export(spec, kube.Options(namespace="prod", image="ghcr.io/o/app@sha256:" + "a" * 64))
    assert ex.name == "full-fleet"
    for m in ex.manifests:
        validate(m, newest_minor_versions()[-1])
        assert api_server_rules(m) == [], m["kind"]
    kinds = [m["kind"] for m in ex.manifests]
    assert kinds.index("Job") < kinds.index("Deployment"), "the release phase comes first"
    job = next(m for m in ex.manifests if m["kind"] == "Job")
    pod = job["spec"]["template"]
    assert pod["spec"]["containers"][0]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert job["spec"]["activeDeadlineSeconds"] == 120 and job["spec"]["backoffLimit"] == 0
    selectors = [m["spec"]["selector"] for m in ex.manifests if m["kind"] in ("Service", "PodDisruptionBudget")]
    selectors += [m["spec"]["selector"]["matchLabels"] for m in ex.manifests if m["kind"] == "Deployment"]
    for sel in selectors:   # no Service, PDB or Deployment selects the Job's pod
        sel = sel.get("matchLabels", sel)
        assert not all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()), sel
    assert any("job/full-fleet-release" in w for w in ex.warnings)
    ing = {m["metadata"]["name"]: m for m in ex.manifests if m["kind"] == "Ingress"}
    assert ing["full-fleet"]["spec"]["tls"] == [{"hosts": ["a.example.com", "example.org",
                                                           "*.example.org"],
                                                 "secretName": "full-fleet-tls"}]
    ann = ing["full-fleet"]["metadata"]["annotations"]
    assert ann[kube.ANNOTATION + "limit-rps"] == "7"
    assert ann[kube.ANNOTATION + "limit-burst-multiplier"] == "8"  # ceil(50 / 7)
    assert ann[kube.ANNOTATION + "limit-connections"] == "9"
    assert ann[kube.ANNOTATION + "load-balance"] == "round_robin"
    assert ann[kube.ANNOTATION + "ssl-redirect"] == "false"
    assert any("kubectl create secret tls full-fleet-tls" in w and "-n prod" in w
               for w in ex.warnings)
    assert ex.controller["ssl-protocols"] == "TLSv1.2 TLSv1.3"


def assert_valid(ex, validate) -> None:
    """Every object of the export against the two newest schemas and the API server's rules."""
    for version in newest_minor_versions():
        for m in ex.manifests:
            assert validate(m, version) == version, (m["kind"], m["metadata"]["name"], version)
    for m in ex.manifests:
        assert api_server_rules(m) == [], (m["kind"], m["metadata"]["name"])


def api_server_rules(m: dict) -> list[str]:
    """Rules the API server enforces that the OpenAPI schemas do not state (from Kubernetes'
    validation code: names, ports, probe and HPA bounds)."""
    broken = []
    name = m["metadata"]["name"]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        broken.append(f"name {name!r}")
    if m["kind"] == "Service" and not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        broken.append(f"Service name {name!r} is not a DNS-1035 label")
    if m["kind"] == "Deployment":
        pod = m["spec"]["template"]["spec"]
        labels = m["spec"]["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in m["spec"]["selector"]["matchLabels"].items()):
            broken.append("selector does not match the template's labels")
        if pod["terminationGracePeriodSeconds"] < 0 or m["spec"].get("minReadySeconds", 0) < 0:
            broken.append("negative grace period or minReadySeconds")
        for c in pod["containers"]:
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", c["name"]) or len(c["name"]) > 63:
                broken.append(f"container name {c['name']!r}")
            if "workingDir" in c and not c["workingDir"].startswith("/"):
                # the API server takes it; the runtime does not (OCI process.cwd is absolute)
                broken.append(f"workingDir {c['workingDir']!r} is not absolute")
            for e in c.get("env", []):
                if not re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", e["name"]):
                    broken.append(f"env name {e['name']!r}")
            if "ports" not in c:   # a worker type's container: no port, no probe, no sleep
                continue
            if not 1 <= c["ports"][0]["containerPort"] <= 65535:
                broken.append("containerPort")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c[probe]
                if p["periodSeconds"] < 1 or p["timeoutSeconds"] < 1 or p["failureThreshold"] < 1:
                    broken.append(f"{probe} below 1")
            if c["livenessProbe"].get("successThreshold", 1) != 1:
                broken.append("livenessProbe successThreshold must be 1")
            sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            if not 0 < sleep < pod["terminationGracePeriodSeconds"]:
                broken.append("preStop sleep must be > 0 and within the grace period")
    if m["kind"] == "HorizontalPodAutoscaler":
        spec = m["spec"]
        if not 1 <= spec["minReplicas"] <= spec["maxReplicas"]:
            broken.append("minReplicas..maxReplicas")
        for d in ("scaleUp", "scaleDown"):
            rules = spec["behavior"][d]
            if not 0 <= rules["stabilizationWindowSeconds"] <= 3600:
                broken.append(f"{d} stabilizationWindowSeconds")
            if not rules["policies"]:
                broken.append(f"{d} has no policy")
            for pol in rules["policies"]:
                if pol["value"] <= 0 or not 0 < pol["periodSeconds"] <= 1800:
                    broken.append(f"{d} policy {pol}")
        if not spec["metrics"]:
            broken.append("an HPA without a metric")
    if m["kind"] == "Ingress":
        for rule in m["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                if not path["path"].startswith("/"):
                    broken.append(f"path {path['path']!r}")
    return broken


@pytest.mark.parametrize("name", CASES)
def test_the_rules_the_api_server_adds_to_the_schemas_hold(name):
    for m in exported(name).manifests:
        assert api_server_rules(m) == [], m["kind"]


@pytest.mark.parametrize("wc,concurrency,fds_key", [
    ("uvicorn_worker.UvicornWorker", "", "gunicorn.worker_connections"),
    ("myworkers.FastWorker", ", concurrency: 9000", "gunicorn.concurrency"),
])
def test_a_dotted_worker_class_goes_to_the_pods_as_given_and_counts_its_concurrency(wc, concurrency, fds_key):
    """The spec's class, not the daemon's orphan shim (a pod's container ends with its master),
    and the open-files check counts the class's concurrency, naming the key that sets it."""
    spec = parse_spec(f"gunicorn: {{workers: 2, worker_class: {wc}{concurrency}}}\n",
                      base_dir=Path("/srv"), cpu_count=2)
    ex = kube.export(spec, kube.Options(nofile=4096))
    [dep] = [m for m in ex.manifests if m["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--worker-class") + 1] == wc and "--threads" not in args
    assert not any("ultrascale_" in a for a in args)
    over = [p for p in ex.budget_problems if p.startswith(fds_key)]
    assert bool(over) == (fds_key == "gunicorn.concurrency"), ex.budget_problems


# ---- where every spec key goes --------------------------------------------------------------

def spec_keys() -> set[str]:
    return {path for path, *_ in iter_settings()}


def test_every_spec_key_is_either_carried_or_listed_as_not_carried():
    keys = spec_keys()
    carried, not_carried = set(kube.CARRIED), set(kube.NOT_CARRIED)
    assert not carried & not_carried, carried & not_carried
    assert not keys - carried - not_carried, f"unmapped keys: {sorted(keys - carried - not_carried)}"
    assert not (carried | not_carried) - keys, f"tables name keys the spec does not have: " \
                                               f"{sorted((carried | not_carried) - keys)}"
    assert all(kube.CARRIED.values()) and all(kube.NOT_CARRIED.values())


def test_docs_kubernetes_md_holds_the_current_tables():
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    assert kube.with_tables(doc) == doc, \
        "docs/kubernetes.md is stale: .venv/bin/python -m ultrascaled.export.kube docs/kubernetes.md"


def set_key(obj, path: str, value):
    """`obj` (a frozen spec or section) with the key at the dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: set_key(getattr(obj, head), rest, value)})


def get_key(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


ON = {"autoscale.enabled": True}
# key -> ({keys set first on both sides}, the new value); other keys get a generic change.
MUTATIONS = {
    "deploy.release_command": ({}, ["python", "manage.py", "migrate"]),
    "processes": ({}, {"w": ProcessType(command=["python", "w.py"])}),
    "deploy.release_timeout": ({"deploy.release_command": ["python", "manage.py", "migrate"]}, 900.0),
    "app.config": ({}, "other_conf.py"),
    "app.module": ({}, "mysite.wsgi:application"),
    "mongodb.connection_budget": ({}, 1000),
    "gunicorn.worker_class": ({}, "sync"),
    "gunicorn.threads": ({"gunicorn.worker_class": "gthread"}, 4),
    "gunicorn.concurrency": ({"gunicorn.worker_class": "uvicorn_worker.UvicornWorker"}, 50),
    "nginx.rate_limit_burst": ({"nginx.rate_limit": 10}, 50),
    "nginx.tls_cert": ({"nginx.tls_key": "/k.pem"}, "/c.pem"),
    "nginx.tls_key": ({"nginx.tls_cert": "/c.pem"}, "/k.pem"),
    "nginx.balance": ({}, ""),
    "nginx.proxy_next_upstream": ({}, "error timeout"),
    "nginx.proxy_connect_timeout": ({}, "5s"),   # 500ms -> 501ms is still 1 s in an annotation
    "nginx.proxy_buffers": ({}, "8 8k"),
    "nginx.server_name": ({}, "example.com"),
    "nginx.socketio_path": ({}, "/ws/"),
    "nginx.socketio_balance": ({}, "ip_hash"),
    "nginx.mode": ({}, "system"),
    "nginx.worker_processes": ({}, "3"),
    "nginx.error_log_level": ({}, "error"),
    "memory.metric": ({}, "pss"),
    "api.host": ({}, "10.0.0.1"),
    "alerts.webhook_url": ({}, "http://127.0.0.1:9/hook"),
    "instances.min": ({"autoscale.enabled": True}, 2),
    "autoscale.enabled": ({}, True),
    "autoscale.min_replicas": (ON, 2),
    "autoscale.max_replicas": (ON, 6),
    "autoscale.target.in_flight_per_worker": (ON, 0.8),
    "autoscale.target.p95_latency_seconds": (ON, 0.5),
    "autoscale.target.cpu_wait_percent": (ON, 20.0),
    "autoscale.behavior.scale_up.select_policy": (ON, "Min"),
    "autoscale.behavior.scale_down.select_policy": (ON, "Disabled"),
    "autoscale.behavior.scale_down.pods_value": (ON, 2),
    "autoscale.behavior.scale_down.pods_period_seconds": (
        {**ON, "autoscale.behavior.scale_down.pods_value": 2}, 60.0),
}
# every other autoscale key is judged with the autoscaler on (off, there is no HPA at all)
AUTOSCALE_ON = ON


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        if value[:1].isdigit():  # an nginx time or size: 60s -> 61s, 10m -> 11m
            digits = len(value) - len(value.lstrip("0123456789"))
            return str(int(value[:digits]) + 1) + value[digits:]
        return value + "x"
    if isinstance(value, (list, tuple)):
        return type(value)(list(value) + ["--extra"])
    if isinstance(value, dict):
        return {**value, "EXTRA_VAR": "1"}
    if value is None:
        return "/tmp/extra"
    raise AssertionError(f"no change for {value!r}")


def changed_at(section, path: list[str]):
    """`section` with the key at `path` (nested sections: processes.NAME.autoscale.queue.redis) changed."""
    head, rest = path[0], path[1:]
    value = getattr(section, head)
    return dataclasses.replace(section, **{head: changed_at(value, rest) if rest else changed(value)})


JOB_CHANGES = {"schedule": {"schedule": "0 4 * * *"}, "every": {"schedule": None, "every": "10m"},
               "concurrency": {"concurrency": "replace"}, "timeout": {"timeout": 60.0},
               "catch_up": {"catch_up": True}, "history": {"history": 5}}


def test_a_carried_key_changes_the_manifests_and_one_not_carried_leaves_them_alone():
    base = load("fleet")
    wrong = []
    for key in sorted(spec_keys()):
        default_pre = AUTOSCALE_ON if key.startswith("autoscale.") else {}
        pre, value = MUTATIONS.get(key, (default_pre, None))
        before = base
        for k, v in pre.items():
            before = set_key(before, k, v)
        if key.startswith("processes.NAME."):   # a key of a `processes:` entry: one worker type `w`
            path = key.split(".")[2:]
            if path[0] in JOB_ONLY:              # or one job `w`
                entry = ProcessType(kind="job", command=["python", "w.py"], schedule="0 3 * * *")
                before = set_key(before, "processes", {"w": entry})
                after = set_key(before, "processes", {"w": dataclasses.replace(entry, **JOB_CHANGES[path[0]])})
            else:
                entry = ProcessType(command=["python", "w.py"])
                if path[0] == "autoscale":        # a type autoscaled on its queue: one name of it set
                    named = path[2] if path[1] == "queue" and path[2] != "redis" else "rq"
                    entry = dataclasses.replace(entry, max=4, autoscale=QueueAutoscale(queue=QueueSource(
                        redis="redis://127.0.0.1:6379/0", **{named: "default"})))
                before = set_key(before, "processes", {"w": entry})
                if path[:3] == ["autoscale", "behavior", "scale_down"] and path[3] == "pods_period_seconds":
                    # as for the web HPA: a period without a Pods policy is in no manifest
                    down = dataclasses.replace(entry.autoscale.behavior.scale_down, pods_value=2)
                    entry = dataclasses.replace(entry, autoscale=dataclasses.replace(entry.autoscale, behavior=(
                        dataclasses.replace(entry.autoscale.behavior, scale_down=down))))
                bound = {"min": 2, "max": 3}.get(path[1]) if path[0] == "autoscale" and len(path) == 2 else None
                after = set_key(before, "processes", {"w": dataclasses.replace(entry, autoscale=dataclasses.replace(
                    entry.autoscale, **{path[1]: bound})) if bound else changed_at(entry, path)})
        else:
            after = set_key(before, key, value if key in MUTATIONS else changed(get_key(before, key)))
        differs = kube.export(before).manifests != kube.export(after).manifests
        if differs != (key in kube.CARRIED):
            wrong.append(f"{key}: {'changes' if differs else 'leaves'} the manifests but is "
                         f"listed as {'carried' if key in kube.CARRIED else 'not carried'}")
    assert not wrong, "\n".join(wrong)


# ---- what the objects say ---------------------------------------------------------------

def objects(ex: kube.Export) -> dict[str, dict]:
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in ex.manifests}


def test_the_deployment_carries_counts_memory_probes_and_the_drain():
    spec = load("django-sync")
    dep = objects(exported("django-sync"))["Deployment/shop"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "replicas" not in dep["spec"]  # autoscale is on: the HPA owns the count
    assert c["resources"]["limits"]["memory"] == f"{(4 + 1) * 384}Mi"  # workers + master
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "1920Mi"}  # 4 x 500m
    assert "cpu" not in c["resources"]["limits"]  # no CPU throttling of the workers
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert (c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["timeoutSeconds"],
            c["livenessProbe"]["failureThreshold"]) == (5, 2, 3)
    assert c["startupProbe"]["failureThreshold"] == 60 and c["startupProbe"]["periodSeconds"] == 1
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}  # restart.drain_seconds
    assert pod["terminationGracePeriodSeconds"] == 5 + 20 + 2  # drain + graceful + 2, the daemon's
    args = c["args"]
    assert args[args.index("--max-requests") + 1] == "2000"  # the spec's own, kept
    assert args[args.index("--max-requests-jitter") + 1] == "200"
    assert args[args.index("--workers") + 1] == "4" and args[-1] == "mysite.wsgi:application"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert c["image"] == "registry.example.com/shop:2026.11.30"


def test_without_the_watchdog_a_pod_recycles_workers_by_count_with_jitter():
    ex = exported("fleet")  # gunicorn.max_requests 0: the daemon recycles by RSS
    args = objects(ex)["Deployment/demo"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-requests") + 1] == str(kube.DEFAULT_MAX_REQUESTS)
    assert args[args.index("--max-requests-jitter") + 1] == str(kube.DEFAULT_MAX_REQUESTS // 10)
    assert any("per-worker memory recycling" in n for n in ex.not_carried)
    assert "--max-requests with --max-requests-jitter" in kube.render_stream(ex)


def test_the_configmap_holds_the_env_and_the_pool_for_the_replica_set():
    ex = exported("large")
    data = objects(ex)["ConfigMap/demo-large-env"]["data"]
    assert data["REDIS_URL"].startswith("redis://redis.cache")
    # 7000 // (48 pods x 4 workers x 3 members) - 2 monitoring
    assert data["MONGO_MAX_POOL_SIZE"] == str(7000 // (48 * 4 * 3) - 2) == "10"
    assert all(isinstance(v, str) for v in data.values())
    assert all(m["metadata"]["namespace"] == "ultrascale" for m in ex.manifests)


def test_a_changed_environment_rolls_the_pods():
    """A ConfigMap change alone restarts no pod; its digest on the pod template does, as a
    reload restarts the instances whose environment changed."""
    spec = load("fleet")
    env2 = dataclasses.replace(spec, app=dataclasses.replace(spec.app, env={**spec.app.env,
                                                                            "CACHE_TTL": "60"}))

    def template(s):
        return objects(kube.export(s))["Deployment/demo"]["spec"]["template"]["metadata"]

    assert template(spec)["annotations"][kube.ENV_HASH] != template(env2)["annotations"][kube.ENV_HASH]
    assert template(spec) == template(load("fleet"))  # and only a change changes it


def test_socketio_gets_its_own_sticky_service_and_ingress_and_none_without_it():
    large = objects(exported("large"))
    sio = large["Ingress/demo-large-socketio"]
    ann = sio["metadata"]["annotations"]
    assert ann[kube.ANNOTATION + "affinity"] == "cookie"
    assert ann[kube.ANNOTATION + "proxy-read-timeout"] == "3600"
    assert sio["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/socket.io/"
    assert [r["host"] for r in sio["spec"]["rules"]] == ["api.example.com", "www.example.com"]
    main = large["Ingress/demo-large"]["metadata"]["annotations"]
    assert main[kube.ANNOTATION + "proxy-read-timeout"] == "30"
    assert kube.ANNOTATION + "affinity" not in main  # a separate Service keeps / unsticky
    assert "Service/demo-large-socketio" in large
    shop = objects(exported("django-sync"))
    assert not [k for k in shop if "socketio" in k]


def test_without_autoscale_the_count_is_fixed_and_there_is_no_hpa():
    o = objects(exported("fleet"))
    assert o["Deployment/demo"]["spec"]["replicas"] == load("fleet").instances.count == 2
    assert not [k for k in o if k.startswith("HorizontalPodAutoscaler")]


def test_the_hpa_follows_the_autoscale_section():
    hpa = objects(exported("large"))["HorizontalPodAutoscaler/demo-large"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (12, 48)  # min_replicas, instances.max
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}},
        {"type": "Object", "object": {
            "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                "name": "demo-large"},
            "metric": {"name": "http_request_duration_seconds_p95"},
            "target": {"type": "Value", "value": "500m"}}}]
    assert hpa["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "tolerance": "100m",
                    "policies": [{"type": "Pods", "value": 8, "periodSeconds": 15},
                                 {"type": "Percent", "value": 100, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "tolerance": "100m",
                      "policies": [{"type": "Percent", "value": 25, "periodSeconds": 60}]}}


def test_the_cpu_target_is_per_worker_and_in_flight_is_per_pod():
    hpa = objects(exported("django-sync"))["HorizontalPodAutoscaler/shop"]["spec"]
    cpu, in_flight = hpa["metrics"]
    # 60 % of one core per worker, with a request of 500m per worker: 120 % of the request
    assert cpu["resource"]["target"]["averageUtilization"] == 120
    # 0.8 requests per worker x 4 workers per pod
    assert in_flight["pods"]["target"] == {"type": "AverageValue", "averageValue": "3200m"}
    assert hpa["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1,
                                                         "periodSeconds": 60}]
    assert hpa["minReplicas"] == 2  # instances.min
    assert any("custom metrics adapter" in w for w in exported("django-sync").warnings)


def test_an_autoscaler_min_of_0_becomes_1_with_a_warning():
    spec = load("large")  # the spec refuses min 0 with autoscale on; a Spec built in code may not
    spec = dataclasses.replace(spec, autoscale=dataclasses.replace(spec.autoscale, min_replicas=0))
    ex = kube.export(spec)
    assert objects(ex)["HorizontalPodAutoscaler/demo-large"]["spec"]["minReplicas"] == 1
    assert any("scale to 0 pods" in w for w in ex.warnings)


def test_a_target_without_an_hpa_equivalent_is_said_and_cpu_at_the_hpa_default_follows():
    spec = parse_spec("autoscale: {enabled: true, target: {cpu_utilization: null, "
                      "cpu_wait_percent: 20}}\n", base_dir=Path("/srv"), cpu_count=2)
    ex = kube.export(spec)
    hpa = objects(ex)["HorizontalPodAutoscaler/ultrascale"]["spec"]
    assert hpa["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 80}}}]
    assert any("cpu_wait_percent has no HPA equivalent; with no other target" in w
               for w in ex.warnings)


def test_a_disabled_direction_without_policies_still_has_one_for_the_api_server():
    spec = parse_spec("autoscale: {enabled: true, behavior: {scale_down: {select_policy: Disabled, "
                      "percent_value: null}}}\n", base_dir=Path("/srv"), cpu_count=2)
    hpa = objects(kube.export(spec))["HorizontalPodAutoscaler/ultrascale"]["spec"]
    assert hpa["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"
    assert hpa["behavior"]["scaleDown"]["policies"]  # "must specify at least one Policy"


def test_the_hpa_scales_the_deployment_and_the_pdb_lets_one_pod_go_at_a_time():
    o = objects(exported("large"))
    hpa = o["HorizontalPodAutoscaler/demo-large"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "demo-large"}
    assert o["PodDisruptionBudget/demo-large"]["spec"]["maxUnavailable"] == 1


# ---- budgets --------------------------------------------------------------------------------

def test_the_budgets_are_judged_for_instances_max_pods():
    ex = exported("fleet")
    assert ex.fits, ex.budget_problems  # against the hard limit the container's command raises to
    small = kube.export(load("fleet"), kube.Options(nofile=1024))
    assert [p.split(":")[0] for p in small.budget_problems] == ["gunicorn.worker_connections"]
    assert "1094 open files per gunicorn worker exceed the pod's nofile limit of 1024" in \
        small.budget_problems[0]
    assert exported("large").fits and exported("django-sync").fits
    assert "DOES NOT FIT" in kube.render_stream(small)
    assert "FITS: every budget holds." in kube.render_stream(exported("large"))


def test_a_budget_that_holds_for_count_but_not_for_max_is_reported():
    spec = parse_spec("instances: {count: 2, max: 40}\ngunicorn: {workers: 2}\n"
                      "memory: {fleet_budget_mb: 8192}\nmongodb: {connection_budget: 4000}\n",
                      base_dir=Path("/srv"), cpu_count=2)
    ex = kube.export(spec, kube.Options(nofile=65536))
    assert ex.budget_problems == ["memory.fleet_budget_mb: 40 pods (instances.max) x (2 workers + "
                                  "1 master) x 500 MiB = 60000 MiB exceeds the budget of 8192 MiB "
                                  "by 51808 MiB"]
    ex3 = kube.export(spec, kube.Options(nofile=65536, mongo_servers=40))
    assert any(p.startswith("mongodb.connection_budget: 4000 connections cannot give")
               for p in ex3.budget_problems)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("1fleet", "must start with a letter"),
    ("_x", "must start with a letter"),
    ("a" * 60, "at most 54 characters"),
    ("ends-", "end with a letter or digit"),
])
def test_a_fleet_name_kubernetes_cannot_take_is_refused_naming_it(name, says):
    spec = dataclasses.replace(load("fleet"), name=name)
    with pytest.raises(kube.ExportError, match="name: ") as info:
        kube.export(spec)
    assert says in str(info.value)


@pytest.mark.parametrize("opts, says", [
    (kube.Options(namespace="Prod"), "--namespace"),
    (kube.Options(namespace="a" * 64), "--namespace"),
    (kube.Options(image="my image"), "--image"),
    (kube.Options(image="x;rm -rf /"), "--image"),
    (kube.Options(cpu_per_worker="lots"), "--cpu-per-worker"),
    (kube.Options(cpu_per_worker="0m"), "--cpu-per-worker"),
    (kube.Options(cpu_per_worker="-1"), "--cpu-per-worker"),
    (kube.Options(max_requests=0), "--max-requests"),
    (kube.Options(nofile=0), "--nofile"),
    (kube.Options(mongo_servers=0), "--mongo-servers"),
])
def test_a_bad_option_is_refused_naming_it(opts, says):
    with pytest.raises(kube.ExportError, match=says):
        kube.export(load("fleet"), opts)


@pytest.mark.parametrize("server_name", ["~^www\\.", "example.com:8080", "*.example.*"])
def test_a_server_name_without_an_ingress_equivalent_is_refused(server_name):
    spec = load("fleet")
    spec = dataclasses.replace(spec, nginx=dataclasses.replace(spec.nginx, server_name=server_name))
    with pytest.raises(kube.ExportError, match="nginx.server_name"):
        kube.export(spec)


def test_loopback_addresses_and_secrets_in_the_env_are_warned_about():
    spec = parse_spec("app: {env: {REDIS_URL: 'redis://localhost:6379', DB_PASSWORD: hunter2, "
                      "MONGODB_URI: 'mongodb://127.0.0.1:27017', PLAIN: '1270.0.0.1'}}\n",
                      base_dir=Path("/srv"), cpu_count=2)
    warnings = "\n".join(kube.export(spec).warnings)
    assert "app.env.REDIS_URL" in warnings and "app.env.MONGODB_URI" in warnings
    assert "app.env.DB_PASSWORD looks like a secret" in warnings
    assert "PLAIN" not in warnings


# ---- the command ----------------------------------------------------------------------------

def test_the_command_writes_the_stream_to_stdout_and_says_the_verdict(capsys):
    rc = cli.main(["export", "kubernetes", "--spec", str(ETC / "large.yaml"), "--image",
                   "registry.example.com/ultrascale-app:1.4.0", "--namespace", "ultrascale",
                   "--mongo-servers", "3"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out == kube.render_stream(exported("large"))
    assert "8 objects for fleet `demo-large` written to stdout" in err
    assert "FITS: every budget holds at instances.max = 48 pods" in err


def test_the_default_spec_exports_and_exits_0(capsys):
    assert cli.main(["export", "kubernetes", "--spec", str(ETC / "fleet.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n---\n") == 7 and "FITS" in err


def test_a_budget_that_cannot_hold_still_writes_and_exits_1(capsys):
    assert cli.main(["export", "kubernetes", "--spec", str(ETC / "fleet.yaml"), "--nofile", "1024"]) == 1
    out, err = capsys.readouterr()
    assert out.count("\n---\n") == 7 and "DOES NOT FIT at instances.max = 8 pods" in err
    assert "warning: app.env.REDIS_URL" in err


def test_an_invalid_spec_exits_2_with_its_own_messages_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "fleet.yaml"
    spec.write_text("instances: {count: 3, max: 2}\nhealth: {path: nope}\n")
    out_dir = tmp_path / "out"
    assert cli.main(["export", "kubernetes", "--spec", str(spec), "-o", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "invalid spec" in err and "instances.count (line 1)" in err and "health.path" in err
    assert not out_dir.exists()


def test_a_spec_the_daemon_refuses_for_its_budgets_exits_1_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "fleet.yaml"
    spec.write_text("instances: {count: 8, max: 8}\ngunicorn: {workers: 4}\n")
    assert cli.main(["export", "kubernetes", "--spec", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "memory.fleet_budget_mb" in err and "nothing written" in err


@pytest.mark.parametrize("argv, says", [
    (["export"], "TARGET"),
    (["export", "docker-compose"], "invalid choice"),
    (["export", "kubernetes", "--nofile", "many"], "--nofile"),
    (["export", "kubernetes", "--spec", "/nonexistent/fleet.yaml"], "cannot read"),
    (["export", "kubernetes", "--spec", str(ETC / "fleet.yaml"), "--namespace", "A B"], "--namespace"),
])
def test_usage_errors_exit_2_and_say_why(argv, says, capsys):
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err


def test_output_dir_gets_one_file_per_object_and_a_kustomization(tmp_path, capsys):
    out = tmp_path / "k8s"
    argv = ["export", "kubernetes", "--spec", str(ETC / "large.yaml"), "-o", str(out),
            "--mongo-servers", "3"]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(n for n in names if n != "kustomization.yaml")
    assert len(kust["resources"]) == 8
    assert "No Kubernetes equivalent" in (out / "kustomization.yaml").read_text()
    dep = yaml.safe_load((out / "deployment-demo-large.yaml").read_text())
    assert dep["kind"] == "Deployment"
    # A later export without Socket.IO removes the files it no longer makes, and only ours.
    (out / "mine.yaml").write_text("kind: ConfigMap\n")
    spec = tmp_path / "nosio.yaml"
    spec.write_text((ETC / "large.yaml").read_text().replace("  proxy_read_timeout: 30s",
                                                             "  proxy_read_timeout: 30s\n  socketio: false")
                    .replace("directory: ../..", f"directory: {ROOT}"))
    capsys.readouterr()
    assert cli.main(["export", "kubernetes", "--spec", str(spec), "-o", str(out),
                     "--mongo-servers", "3"]) == 0
    err = capsys.readouterr().err
    left = {p.name for p in out.iterdir()}
    assert "ingress-demo-large-socketio.yaml" not in left and "service-demo-large-socketio.yaml" not in left
    assert "mine.yaml" in left and "removed" in err


def test_an_output_path_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["export", "kubernetes", "--spec", str(ETC / "fleet.yaml"), "-o", str(f)]) == 2
    assert "--output" in capsys.readouterr().err


def test_status_never_imports_the_exporter():
    code = ("import sys; from ultrascaled.surface import cli; cli.parse_args(['status']); "
            "print('ultrascaled.export.kube' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- attacks --------------------------------------------------------------------------------

def test_an_operators_own_file_in_the_output_folder_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: [mine.yaml]\n")
    argv = ["export", "kubernetes", "--spec", str(ETC / "large.yaml"), "-o", str(out)]
    assert cli.main(argv) == 2
    assert "kustomization.yaml exist and were not written by" in capsys.readouterr().err
    assert (out / "kustomization.yaml").read_text() == "resources: [mine.yaml]\n"
    assert sorted(p.name for p in out.iterdir()) == ["kustomization.yaml"]  # nothing written


def test_a_symlink_named_like_an_output_file_is_not_followed(tmp_path, capsys):
    out = tmp_path / "k8s"
    out.mkdir()
    target = tmp_path / "precious"
    target.write_text(kube.GENERATED_MARK + " but a link to it must not be replaced\n")
    (out / "deployment-demo-large.yaml").symlink_to(target)
    assert cli.main(["export", "kubernetes", "--spec", str(ETC / "large.yaml"), "-o", str(out)]) == 2
    assert target.read_text().endswith("must not be replaced\n")


def test_a_value_kubernetes_holds_in_32_bits_is_checked():
    spec = dataclasses.replace(load("fleet"), health=dataclasses.replace(
        load("fleet").health, failures=2 ** 31))
    with pytest.raises(kube.ExportError, match="failureThreshold would be 2147483648"):
        kube.export(spec)


def test_socketio_on_the_root_path_is_refused():
    spec = load("fleet")
    spec = dataclasses.replace(spec, nginx=dataclasses.replace(spec.nginx, socketio_path="/"))
    with pytest.raises(kube.ExportError, match="nginx.socketio_path"):
        kube.export(spec)


def test_no_spec_value_can_end_a_comment_of_the_header():
    spec = parse_spec('app: {env: {REDIS_URL: "redis://localhost/0\\nkind: Secret\\u2028x: 1"}}\n',
                      base_dir=Path("/srv"), cpu_count=2)
    text = kube.render_stream(kube.export(spec))
    head = text.split("\n---\n", 1)[0]
    assert all(line.startswith("#") for line in head.splitlines())
    assert list(yaml.safe_load_all(text)) == kube.export(spec).manifests


@pytest.mark.integration  # runs ultrascalectl as a process, twice
@pytest.mark.parametrize("argv", [["export", "kubernetes"], ["plan", "--users", "10"]])
def test_a_closed_stdout_is_exit_1_without_a_traceback(argv):
    """Found attacking the export: `ultrascalectl plan ... | head -1` ended in a BrokenPipeError
    traceback when head exited first."""
    r, w = os.pipe()
    os.close(r)  # every write to w fails with EPIPE
    try:
        out = subprocess.run([sys.executable, "-m", "ultrascaled.surface.cli", *argv, "--spec",
                              str(ETC / "large.yaml")], stdout=w, stderr=subprocess.PIPE, text=True,
                             timeout=60)
    finally:
        os.close(w)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "stdout was closed" in out.stderr


# Names as ingress-nginx documents them (docs/user-guide/nginx-configuration/annotations.md and
# configmap.md in kubernetes/ingress-nginx): the ones this export may use or name. A name
# misspelt in export/kube/ is silently ignored by the controller; this catches it.
DOCUMENTED_ANNOTATIONS = {
    "affinity", "affinity-mode", "session-cookie-name", "session-cookie-path", "limit-rps",
    "limit-burst-multiplier", "limit-connections", "proxy-body-size", "client-body-buffer-size",
    "proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout", "proxy-next-upstream",
    "proxy-next-upstream-timeout", "proxy-next-upstream-tries", "proxy-buffering",
    "proxy-buffers-number", "proxy-buffer-size", "load-balance", "ssl-redirect", "upstream-hash-by",
}
DOCUMENTED_CONTROLLER_KEYS = {
    "limit-req-status-code", "limit-conn-status-code", "upstream-keepalive-connections",
    "upstream-keepalive-requests", "upstream-keepalive-timeout", "client-header-timeout",
    "client-body-timeout", "keep-alive", "worker-shutdown-timeout", "ssl-protocols", "use-http2",
    "max-worker-connections", "worker-processes", "error-log-level", "allow-snippet-annotations",
}


def test_every_annotation_and_controller_key_is_one_ingress_nginx_documents():
    spec = parse_spec("nginx: {tls_cert: /c.pem, tls_key: /k.pem, rate_limit: 5, conn_limit: 5}\n",
                      base_dir=Path("/srv"), cpu_count=2)
    for ex in [kube.export(spec)] + [exported(n) for n in CASES]:
        for m in ex.manifests:
            for key in m["metadata"].get("annotations", {}):
                assert key.startswith(kube.ANNOTATION), key
                assert key[len(kube.ANNOTATION):] in DOCUMENTED_ANNOTATIONS, key
        assert set(ex.controller) <= DOCUMENTED_CONTROLLER_KEYS, set(ex.controller)
    for why in kube.NOT_CARRIED.values():  # keys named in the not-carried reasons, too
        for name in re.findall(r"controller-wide: ([a-z-]+) in its ConfigMap", why):
            assert name in DOCUMENTED_CONTROLLER_KEYS, name
