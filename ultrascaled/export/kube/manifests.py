"""The fleet's Kubernetes objects, built from its spec as plain dicts.

ConfigMap, Deployment, one Deployment per worker type (and its HorizontalPodAutoscaler on its
queue's depth), one CronJob per job, Services, HorizontalPodAutoscaler, PodDisruptionBudget and Ingresses, and
the ingress-nginx controller settings that are told alongside them, never applied.
"""
from __future__ import annotations

import hashlib
import json
import math
import posixpath
from typing import TYPE_CHECKING, Any

from ultrascaled.spec.nginx import parse_time
from ultrascaled.export.kube.checks import cpu_millis, k8s_name
from ultrascaled.export.kube.model import (ANNOTATION, ENV_HASH, HPA_DEFAULT_CPU_UTILIZATION,
                                           INGRESS_CLASS, METRICS_DIR, PROCESS_TYPE, RAISE_NOFILE,
                                           ExportError, Options)
from ultrascaled.spec.budget import mongo_pool_that_fits

if TYPE_CHECKING:  # pragma: no cover
    from ultrascaled.spec import Spec


# ---- small helpers -------------------------------------------------------------------------

def _cpu_quantity(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _seconds(value: float, least: int = 1) -> int:
    """Whole seconds for a Kubernetes field (probes and grace periods take integers)."""
    return max(least, math.ceil(value))


def _nginx_seconds(value: str) -> str:
    """An nginx time (`60s`, `1m30s`, `500ms`) as the whole seconds an annotation takes (0, which
    means no limit where nginx allows it, stays 0)."""
    seconds = parse_time(value) or 0
    return str(_seconds(seconds) if seconds else 0)


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "ultrascale",
            "app.kubernetes.io/managed-by": "ultrascalectl"}


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name}


def _meta(name: str, opts: Options, fleet: str, annotations: dict | None = None) -> dict:
    """metadata of an object called `name` that belongs to the fleet whose objects are `fleet`."""
    meta: dict[str, Any] = {"name": name}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    meta["labels"] = labels(fleet)
    if annotations:
        meta["annotations"] = annotations
    return meta


# ---- the objects ---------------------------------------------------------------------------

def app_environment(spec: "Spec", mongo_servers: int = 1) -> dict[str, str]:
    """The ConfigMap's data: the app's env, then what the daemon gives every instance that a
    pod still needs (the MongoDB pool sizes, the fleet name, the metrics folder)."""
    env = dict(sorted(spec.app.env.items()))
    env.update({
        "MONGO_MAX_POOL_SIZE": str(max(mongo_pool_that_fits(spec, mongo_servers, spares=False), 1)),
        "MONGO_MIN_POOL_SIZE": str(spec.mongodb.min_pool_size),
        "MONGO_MAX_CONNECTING": str(spec.mongodb.max_connecting),
        "ULTRASCALE_FLEET": spec.name,
        "PROMETHEUS_MULTIPROC_DIR": METRICS_DIR,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def gunicorn_args(spec: "Spec", max_requests: int) -> list[str]:
    """gunicorn's arguments in the container: the daemon's (command.gunicorn_argv) less what the
    pod decides (the interpreter, --chdir, the log file), bound to every address of the pod."""
    g = spec.gunicorn
    port = spec.instances.base_port
    requests, jitter = g.max_requests, g.max_requests_jitter
    if requests == 0:  # the daemon recycles by measured RSS; a pod recycles by count
        requests, jitter = max_requests, jitter or max_requests // 10
    args = ["--bind", f"0.0.0.0:{port}", "--workers", str(spec.workers),
            "--worker-class", g.worker_class, "--worker-connections", str(g.worker_connections)]
    if g.worker_class == "gthread":
        args += ["--threads", str(g.threads)]
    args += ["--timeout", str(g.timeout), "--graceful-timeout", str(g.graceful_timeout),
             "--keep-alive", str(g.keepalive), "--max-requests", str(requests),
             "--max-requests-jitter", str(jitter), "--name", f"ultrascale-{spec.name}"]
    if spec.app.config:
        args += ["-c", spec.app.config]
    return args + list(g.args) + [spec.app.module]


def memory_limit_mib(spec: "Spec") -> int:
    """Every process of the pod at the per-worker limit: workers + the master."""
    return (spec.workers + 1) * spec.memory.worker_limit_mb


def prestop_seconds(spec: "Spec") -> int:
    return _seconds(spec.restart.drain_seconds)


def env_hash(spec: "Spec", opts: Options) -> str:
    """A digest of the ConfigMap's data, on the pod template: a changed environment changes the
    template, so Kubernetes rolls the pods, as a reload restarts the instances whose
    environment changed (a ConfigMap change alone restarts nothing)."""
    data = json.dumps(app_environment(spec, opts.mongo_servers), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def configmap(spec: "Spec", name: str, opts: Options) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{name}-env", opts, name),
            "data": app_environment(spec, opts.mongo_servers)}


def deployment(spec: "Spec", name: str, opts: Options) -> dict:
    h = spec.health
    port = spec.instances.base_port
    period, timeout = _seconds(h.interval), _seconds(h.timeout)

    def probe(**extra: int) -> dict:
        return {"httpGet": {"path": h.path, "port": "http"}, **extra}

    mem = f"{memory_limit_mib(spec)}Mi"
    cpu = _cpu_quantity(spec.workers * cpu_millis(opts.cpu_per_worker))
    container = {
        "name": "gunicorn",
        "image": opts.image or f"{name}:latest",
        "command": ["sh", "-c", RAISE_NOFILE, "gunicorn"],   # "$@" = args
        "args": gunicorn_args(spec, opts.max_requests),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [{"name": "PORT", "value": str(port)},
                {"name": "ULTRASCALE_PORT", "value": str(port)}],
        # app.env_file's Secret first: a later source wins, so app.env (the ConfigMap) overrides
        # it as on the daemon; the export never writes the Secret (its values stay out of here)
        "envFrom": ([{"secretRef": {"name": f"{name}-env-file"}}] if spec.app.env_file else [])
                   + [{"configMapRef": {"name": f"{name}-env"}}],
        "resources": {"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": mem}},
        "startupProbe": probe(periodSeconds=1, timeoutSeconds=timeout,
                              failureThreshold=_seconds(h.start_timeout)),
        "readinessProbe": probe(periodSeconds=period, timeoutSeconds=timeout,
                                failureThreshold=h.failures, successThreshold=1),
        "livenessProbe": probe(periodSeconds=period, timeoutSeconds=timeout,
                               failureThreshold=h.failures),
        "lifecycle": {"preStop": {"sleep": {"seconds": prestop_seconds(spec)}}},
        "volumeMounts": [{"name": "metrics", "mountPath": METRICS_DIR}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    grace = prestop_seconds(spec) + spec.gunicorn.graceful_timeout + 2
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, opts, name),
        "spec": {
            **({} if spec.autoscale.enabled else {"replicas": spec.instances.count}),
            "selector": {"matchLabels": selector(name)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels(name),
                             "annotations": {ENV_HASH: env_hash(spec, opts)}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [container],
                    "volumes": [{"name": "metrics", "emptyDir": {}}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": selector(name)}}],
                },
            },
        },
    }


def release_job(spec: "Spec", name: str, opts: Options) -> dict:
    """deploy.release_command as a Job of the same image and environment, to run to completion
    before the Deployment rolls (Heroku's release phase; a Helm pre-upgrade hook or an Argo CD
    PreSync hook in a pipeline): no retry, killed at deploy.release_timeout."""
    pod = deployment(spec, name, opts)["spec"]["template"]["spec"]
    gunicorn = pod["containers"][0]
    container = {"name": "release", "image": gunicorn["image"], "command": list(spec.deploy.release_command),
                 "envFrom": gunicorn["envFrom"], "securityContext": gunicorn["securityContext"]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(f"{name}-release", opts, name),
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": _seconds(spec.deploy.release_timeout),
                     # labels of its own: the Service, the Deployment and the PDB must not select it
                     "template": {"metadata": {"labels": labels(f"{name}-release")},
                                  "spec": {"restartPolicy": "Never", "containers": [container]}}}}


# In the container, a worker type's `directory` inside app.directory: enter it, then become the
# type's argv (PID 1 stays the type's process, for the kubelet's and the preStop's signals).
ENTER_FOLDER = 'cd "$0" && exec "$@"'


def worker_folder(spec: "Spec", type_key: str) -> str | None:
    """Where a worker type runs in its pod, by its `directory` against app.directory (the image's
    working directory, as for the web pods): None for app.directory itself (or no directory),
    the path inside it for a folder within it (`worker/`), and an absolute path for a folder
    outside it, which the image must then hold at that path."""
    folder = spec.processes[type_key].directory
    if folder is None:
        return None
    app = posixpath.normpath(spec.app.directory)
    folder = posixpath.normpath(posixpath.join(app, folder))   # loaded specs are absolute
    if folder == app:
        return None
    if folder.startswith(app.rstrip("/") + "/"):
        return posixpath.relpath(folder, app)
    return folder


def stop_hook(signal_name: str) -> dict:
    """The preStop hook of a type whose stop_signal is not TERM. After preStop the container is
    sent SIGTERM (or its image's STOPSIGNAL; lifecycle.stopSignal needs a feature gate and
    spec.os.name), so the hook sends the type's signal to PID 1 and waits for it to exit: the
    SIGTERM comes only if the hook is cut off (RQ takes a second signal as "stop now"). `kill` is
    sh's builtin, so the image needs only a `sh`."""
    return {"exec": {"command": [
        "sh", "-c", f"kill -s {signal_name} 1; while kill -0 1 2>/dev/null; do sleep 1; done"]}}


def process_container(spec: "Spec", name: str, opts: Options, type_key: str, part: str) -> dict:
    """A process type's container: the web pods' image, environment (envFrom), mounts and
    security, the type's own env over them, its argv as the command (entering its folder when
    that is inside app.directory) and a preStop hook for a stop signal other than TERM."""
    t = spec.processes[type_key]
    web = deployment(spec, name, opts)["spec"]["template"]["spec"]["containers"][0]
    mem = f"{t.memory_limit_mb or spec.memory.worker_limit_mb}Mi"
    container: dict[str, Any] = {"name": part, "image": web["image"]}
    folder = worker_folder(spec, type_key)
    if folder is not None and not folder.startswith("/"):
        # workingDir must be absolute (the OCI runtime spec's process.cwd) and the export does
        # not know the image's WORKDIR: the command enters the folder inside it
        container["command"] = ["sh", "-c", ENTER_FOLDER, folder]
        container["args"] = list(t.command)
    else:
        container["command"] = list(t.command)
        if folder is not None:
            container["workingDir"] = folder
    if t.env:   # a container's env wins over its envFrom: the type's env over app.env
        container["env"] = [{"name": k, "value": str(v)} for k, v in sorted(t.env.items())]
    container.update({
        "envFrom": web["envFrom"],
        "resources": {"requests": {"cpu": _cpu_quantity(cpu_millis(opts.cpu_per_worker)),
                                   "memory": mem},
                      "limits": {"memory": mem}},
    })
    if t.stop_signal != "TERM":
        container["lifecycle"] = {"preStop": stop_hook(t.stop_signal)}
    container.update({"volumeMounts": web["volumeMounts"],
                      "securityContext": web["securityContext"]})
    return container


def worker_deployment(spec: "Spec", name: str, opts: Options, type_key: str, part: str) -> dict:
    """A `kind: worker` type as Deployment NAME-TYPE: its container (:func:`process_container`),
    `count` replicas replaced one at a time like the daemon's roll (stop, then start), its
    graceful_timeout as the grace period, its start_seconds as minReadySeconds. No port, no
    probe and no Service: a worker serves nothing; its pods' labels are their own, so that no web
    Service, PDB or Deployment selects them."""
    t = spec.processes[type_key]
    obj_name = f"{name}-{part}"
    container = process_container(spec, name, opts, type_key, part)
    pod_labels = {**labels(obj_name), PROCESS_TYPE: part}
    match = {**selector(obj_name), PROCESS_TYPE: part}
    meta = _meta(obj_name, opts, name)
    meta["labels"][PROCESS_TYPE] = part
    # the daemon rolls a type one process at a time, the next started only once the old one
    # has exited: never more than `count` at once (a singleton such as a scheduler stays one)
    strategy = ({"type": "Recreate"} if t.count <= 1 else
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": t.count,
            "minReadySeconds": _seconds(t.start_seconds, least=0),
            "selector": {"matchLabels": dict(match)},   # no object twice: no YAML aliases
            "strategy": strategy,
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": {ENV_HASH: env_hash(spec, opts)}},
                "spec": {
                    "terminationGracePeriodSeconds": _seconds(t.graceful_timeout),
                    "containers": [container],
                    "volumes": [{"name": "metrics", "emptyDir": {}}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": dict(match)}}],
                },
            },
        },
    }


CONCURRENCY_POLICY = {"forbid": "Forbid", "replace": "Replace", "allow": "Allow"}
JOBS_KEPT_MAX = 10       # Job objects a CronJob keeps of each outcome (each keeps its pod)
MISSED_DEADLINE = 60     # catch_up: false: a run more than this late is skipped, not caught up


def cron_of(spec: "Spec", type_key: str) -> str:
    """A job's schedule as a CronJob's: `schedule` as it is (Kubernetes takes the same five
    fields and the @ macros), an `every` period only when cron can say it (a CronJob runs at most
    once a minute, on the clock's minutes)."""
    from ultrascaled.spec.jobs import every_seconds

    t = spec.processes[type_key]
    if t.schedule:
        return t.schedule.strip()
    seconds = every_seconds(t.every or "")
    minutes = seconds / 60
    if minutes == int(minutes) and minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"*/{int(minutes)} * * * *"
    hours = minutes / 60
    if hours == int(hours) and 1 <= hours <= 24 and 24 % hours == 0:
        return {1: "0 * * * *", 24: "0 0 * * *"}.get(int(hours), f"0 */{int(hours)} * * *")
    raise ExportError(f"processes.{type_key}.every {t.every}: a CronJob runs on cron's schedule, "
                      "at most once a minute and on periods that divide an hour or a day; "
                      "write a `schedule` for it (e.g. '*/5 * * * *'), or run it as a worker")


def cronjob(spec: "Spec", name: str, opts: Options, type_key: str, part: str) -> dict:
    """A `kind: job` type as CronJob NAME-TYPE: its container (:func:`process_container`), its
    schedule, `concurrency` as concurrencyPolicy, `timeout` as the Job's activeDeadlineSeconds,
    no retry (the daemon does not retry a run either), `catch_up: false` as a starting deadline
    past which a missed run is skipped, `history` as the Jobs kept (at most JOBS_KEPT_MAX)."""
    t = spec.processes[type_key]
    obj_name = f"{name}-{part}"
    meta = _meta(obj_name, opts, name)
    meta["labels"][PROCESS_TYPE] = part
    job: dict[str, Any] = {"backoffLimit": 0}
    if t.timeout is not None:
        job["activeDeadlineSeconds"] = _seconds(t.timeout)
    job["template"] = {
        "metadata": {"labels": {**labels(obj_name), PROCESS_TYPE: part},
                     "annotations": {ENV_HASH: env_hash(spec, opts)}},
        "spec": {"restartPolicy": "Never",
                 "terminationGracePeriodSeconds": _seconds(t.graceful_timeout),
                 "containers": [process_container(spec, name, opts, type_key, part)],
                 "volumes": [{"name": "metrics", "emptyDir": {}}]}}
    cron: dict[str, Any] = {"schedule": cron_of(spec, type_key),
                            "concurrencyPolicy": CONCURRENCY_POLICY[t.concurrency]}
    if not t.catch_up:
        cron["startingDeadlineSeconds"] = MISSED_DEADLINE
    kept = min(t.history, JOBS_KEPT_MAX)
    cron.update({"successfulJobsHistoryLimit": kept, "failedJobsHistoryLimit": kept,
                 "jobTemplate": {"metadata": {"labels": {**labels(obj_name), PROCESS_TYPE: part}},
                                 "spec": job}})
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta, "spec": cron}


def service(spec: "Spec", name: str, opts: Options, suffix: str = "") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name + suffix, opts, name),
            "spec": {"type": "ClusterIP", "selector": selector(name),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http",
                                "protocol": "TCP"}]}}


def quantity(value: float) -> str:
    """A Kubernetes quantity for a number: `3`, or millis (`3200m`, `100m`)."""
    millis = round(value * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _rules(rules: Any, tolerance: float) -> dict:
    """One direction of the HPA's `behavior` from autoscale.behavior.scale_up/scale_down. The
    HPA's policy values are whole numbers: a Percent is rounded up."""
    policies = []
    if rules.pods_value is not None:
        policies.append({"type": "Pods", "value": rules.pods_value,
                         "periodSeconds": _seconds(rules.pods_period_seconds)})
    if rules.percent_value is not None:
        policies.append({"type": "Percent", "value": math.ceil(rules.percent_value),
                         "periodSeconds": _seconds(rules.percent_period_seconds)})
    if not policies:  # selectPolicy Disabled without a policy: the API server still wants one
        policies.append({"type": "Percent", "value": 100, "periodSeconds": 15})
    out: dict[str, Any] = {"stabilizationWindowSeconds": _seconds(rules.stabilization_window_seconds,
                                                                   least=0),
                           "selectPolicy": rules.select_policy, "policies": policies}
    out["tolerance"] = quantity(tolerance)
    return out


def hpa_metrics(spec: "Spec", cpu_per_worker_millis: int) -> list[dict]:
    """The HPA's metrics from autoscale.target. CPU per worker in percent of one core becomes
    the utilization of the pod's request (one `--cpu-per-worker` per worker); in-flight per
    worker a Pods metric per pod; p95 an Object metric on the Ingress. The last two need a
    custom-metrics adapter serving them (docs/kubernetes.md)."""
    t, name = spec.autoscale.target, k8s_name(spec.name)
    metrics = []
    if t.cpu_utilization is not None:
        utilization = math.ceil(t.cpu_utilization * 1000 / cpu_per_worker_millis)
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": utilization}}})
    if t.in_flight_per_worker is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": "http_requests_in_flight"},
            "target": {"type": "AverageValue",
                       "averageValue": quantity(t.in_flight_per_worker * spec.workers)}}})
    if t.p95_latency_seconds is not None:
        metrics.append({"type": "Object", "object": {
            "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                "name": name},
            "metric": {"name": "http_request_duration_seconds_p95"},
            "target": {"type": "Value", "value": quantity(t.p95_latency_seconds)}}})
    if not metrics:  # only targets without an HPA equivalent: the HPA's own default, said so
        metrics.append({"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": HPA_DEFAULT_CPU_UTILIZATION}}})
    return metrics


def hpa_spec(spec: "Spec", name: str, opts: Options) -> dict:
    """The HorizontalPodAutoscaler's spec from the `autoscale:` section: THE one place the
    policy is mapped (its keys are named after the HPA's)."""
    a = spec.autoscale
    lo, hi = a.bounds(spec.instances)
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": max(1, lo),
        "maxReplicas": hi,
        "metrics": hpa_metrics(spec, cpu_millis(opts.cpu_per_worker)),
        "behavior": {"scaleUp": _rules(a.behavior.scale_up, a.tolerance),
                     "scaleDown": _rules(a.behavior.scale_down, a.tolerance)},
    }


def hpa(spec: "Spec", name: str, opts: Options) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(name, opts, name), "spec": hpa_spec(spec, name, opts)}


QUEUE_METRIC = "ultrascale_queue_depth"   # the External metric a metrics adapter serves (notes.py)


def queue_list(t: Any) -> str:
    """The Redis list a worker type's autoscaling reads (spec/queue.py's names)."""
    q = t.autoscale.queue
    return q.list or (f"rq:queue:{q.rq}" if q.rq else q.celery or "")


def queue_hpa(spec: "Spec", name: str, opts: Options, type_key: str, part: str) -> dict:
    """A worker type's queue-depth autoscaling as HorizontalPodAutoscaler NAME-TYPE on its
    Deployment: the same decision the daemon makes (ceil(depth / target) pods, its tolerance and
    behavior) on an External metric, the Redis list's length, with an AverageValue target. A
    metrics adapter must serve that metric; notes.py says which."""
    t = spec.processes[type_key]
    a = t.autoscale
    lo, hi = a.bounds(t)
    obj_name = f"{name}-{part}"
    meta = _meta(obj_name, opts, name)
    meta["labels"][PROCESS_TYPE] = part
    metric = {"type": "External", "external": {
        "metric": {"name": QUEUE_METRIC, "selector": {"matchLabels": {"queue": queue_list(t).replace(":", "_")}}},
        "target": {"type": "AverageValue", "averageValue": quantity(a.target)}}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": obj_name},
                     "minReplicas": max(1, lo), "maxReplicas": hi, "metrics": [metric],
                     "behavior": {"scaleUp": _rules(a.behavior.scale_up, a.tolerance),
                                  "scaleDown": _rules(a.behavior.scale_down, a.tolerance)}}}


def pdb(spec: "Spec", name: str, opts: Options) -> dict:
    """At most one pod voluntarily down at a time: the daemon's rolling restart keeps N-1."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(name, opts, name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}}


def ingress_hosts(spec: "Spec") -> list[str]:
    """Ingress hosts from nginx.server_name: `_` (any) is no host; a name nginx reads as a
    regular expression (`~...`) has no Ingress equivalent (refused by checks.check_ingress)."""
    names = [n for n in spec.nginx.server_name.split(" ") if n and n != "_"]
    out = []
    for n in names:
        n = n.rstrip(".").lower()
        if n.startswith("."):  # nginx's `.example.com` = example.com and its subdomains
            out += [n[1:], "*" + n]
        else:
            out.append(n)
    return list(dict.fromkeys(out))


def ingress_annotations(spec: "Spec", socketio: bool) -> dict[str, str]:
    ng = spec.nginx
    a: dict[str, str] = {}
    if ng.rate_limit > 0:
        a["limit-rps"] = str(ng.rate_limit)
        a["limit-burst-multiplier"] = str(max(1, math.ceil(ng.rate_limit_burst / ng.rate_limit)))
    if ng.conn_limit > 0:
        a["limit-connections"] = str(ng.conn_limit)
    a["proxy-body-size"] = ng.client_max_body_size
    a["client-body-buffer-size"] = ng.client_body_buffer_size
    a["proxy-connect-timeout"] = _nginx_seconds(ng.proxy_connect_timeout)
    a["proxy-send-timeout"] = _nginx_seconds(ng.proxy_send_timeout)
    a["proxy-next-upstream"] = ng.proxy_next_upstream.strip() or "off"
    a["proxy-next-upstream-tries"] = str(ng.proxy_next_upstream_tries)
    a["proxy-next-upstream-timeout"] = _nginx_seconds(ng.proxy_next_upstream_timeout)
    a["proxy-buffer-size"] = ng.proxy_buffer_size
    a["proxy-buffers-number"] = ng.proxy_buffers.split(" ")[0]
    if socketio:  # WebSocket upgrades are on by default in ingress-nginx
        a["proxy-read-timeout"] = _nginx_seconds(ng.socketio_read_timeout)
        a["proxy-buffering"] = "off"
        a["affinity"] = "cookie"
        a["affinity-mode"] = "persistent"
        a["session-cookie-name"] = f"{ng.upstream_name}_sio"
    else:
        a["proxy-read-timeout"] = _nginx_seconds(ng.proxy_read_timeout)
        a["proxy-buffering"] = "on" if ng.proxy_buffering else "off"
        a["load-balance"] = "ewma" if "least_conn" in ng.balance else "round_robin"
    if ng.tls_enabled:
        a["ssl-redirect"] = "false"  # the managed nginx serves HTTP and HTTPS alike
    return {ANNOTATION + k: v for k, v in sorted(a.items())}


def ingress(spec: "Spec", name: str, opts: Options, socketio: bool = False) -> dict:
    ng = spec.nginx
    path = ng.socketio_path if socketio else "/"
    backend = name + ("-socketio" if socketio else "")
    http = {"paths": [{"path": path, "pathType": "Prefix",
                       "backend": {"service": {"name": backend, "port": {"name": "http"}}}}]}
    hosts = ingress_hosts(spec)
    rules = [{"host": h, "http": http} for h in hosts] or [{"http": http}]
    body: dict[str, Any] = {"ingressClassName": INGRESS_CLASS}
    if ng.tls_enabled:
        tls: dict[str, Any] = {"secretName": f"{name}-tls"}
        if hosts:
            tls = {"hosts": hosts, **tls}
        body["tls"] = [tls]
    body["rules"] = rules
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(backend, opts, name, ingress_annotations(spec, socketio)), "spec": body}


def controller_settings(spec: "Spec") -> dict[str, str]:
    """What the managed nginx sets for the whole server that ingress-nginx sets only in its
    controller ConfigMap (shared by every Ingress of the cluster): told, never applied."""
    ng = spec.nginx
    out = {
        "limit-req-status-code": str(ng.rate_limit_status),
        "limit-conn-status-code": str(ng.rate_limit_status),
        "upstream-keepalive-connections": str(ng.keepalive),
        "upstream-keepalive-requests": str(ng.keepalive_requests),
        "upstream-keepalive-timeout": str(_seconds(parse_time(ng.keepalive_timeout) or 0, 0)),
        "client-header-timeout": str(_seconds(parse_time(ng.client_header_timeout) or 0, 0)),
        "client-body-timeout": str(_seconds(parse_time(ng.client_body_timeout) or 0, 0)),
        "keep-alive": str(_seconds(parse_time(ng.client_keepalive_timeout.split(" ")[0]) or 0, 0)),
        "worker-shutdown-timeout": ng.worker_shutdown_timeout,
    }
    if ng.tls_enabled:
        out["ssl-protocols"] = ng.tls_protocols
        out["use-http2"] = "true" if ng.http2 else "false"
    return dict(sorted(out.items()))
