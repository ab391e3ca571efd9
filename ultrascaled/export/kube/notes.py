"""The notes read with the manifests: the budgets at instances.max pods, and the warnings.

Each budget's arithmetic and the problems when one cannot hold; the warnings are what to act on
before applying.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ultrascaled.export.kube.checks import worker_names
from ultrascaled.export.kube.manifests import memory_limit_mib, worker_folder
from ultrascaled.export.kube.model import HPA_DEFAULT_CPU_UTILIZATION, Options
from ultrascaled.spec.envfile import looks_secret
from ultrascaled.spec.budget import (GUNICORN_WORKER_BASE_FDS, MONGO_MONITOR_PER_SERVER,
                                     gunicorn_worker_fds, mongo_connections_per_process,
                                     mongo_pool_that_fits, open_connections_per_worker, plural,
                                     connections_key)

if TYPE_CHECKING:  # pragma: no cover
    from ultrascaled.spec import Spec

_LOOPBACK = re.compile(r"(?<![0-9.])127\.[0-9]+\.[0-9]+\.[0-9]+|\blocalhost\b|\[::1\]")


def budgets(spec: "Spec", opts: Options) -> tuple[list[str], list[str]]:
    """(the arithmetic of each budget, the problems) for instances.max pods: the HPA may scale
    to it and nothing in the cluster refuses a pod past a budget. No nginx and no daemon here:
    their file-descriptor budgets are the controller's and do not apply."""
    s = plural
    imax, w, servers = spec.instances.max, spec.workers, opts.mongo_servers
    # maxPoolSize per process that keeps instances.max pods within mongodb.connection_budget
    # when each client connects to `servers` servers (a replica set's members)
    pool = mongo_pool_that_fits(spec, servers, spares=False)
    per = mongo_connections_per_process(max(pool, 0), servers)
    limit, budget = spec.memory.worker_limit_mb, spec.memory.fleet_budget_mb
    mem = imax * memory_limit_mib(spec)
    cb = spec.mongodb.connection_budget
    fds = gunicorn_worker_fds(spec, max(pool, 0), servers)
    lines = [
        f"memory: {s(imax, 'pod')} (instances.max) x ({s(w, 'worker')} + 1 master) x {limit} MiB "
        f"= {mem} MiB of memory limits; memory.fleet_budget_mb {budget} MiB",
        f"MongoDB: {s(imax, 'pod')} x {s(w, 'worker')} x {s(servers, 'server')} x ({pool} pool + "
        f"{MONGO_MONITOR_PER_SERVER} monitoring) = {imax * w * per} connections; "
        f"mongodb.connection_budget {cb}",
        f"open files per gunicorn worker: "
        f"{s(open_connections_per_worker(spec), 'connection')} + {per} MongoDB + "
        f"{GUNICORN_WORKER_BASE_FDS} other = {fds}; the pod's nofile limit "
        f"{opts.nofile} (--nofile)",
    ]
    problems = []
    if mem > budget:
        problems.append(f"memory.fleet_budget_mb: {s(imax, 'pod')} (instances.max) x "
                        f"({s(w, 'worker')} + 1 master) x {limit} MiB = {mem} MiB exceeds the "
                        f"budget of {budget} MiB by {mem - budget} MiB")
    if pool < 1:
        need = imax * w * mongo_connections_per_process(1, servers)
        problems.append(f"mongodb.connection_budget: {cb} connections cannot give each of "
                        f"{imax} pods x {s(w, 'worker')} a pool of 1 on {s(servers, 'server')}: "
                        f"{need} needed, over by {need - cb}")
    else:
        for key in ("min_pool_size", "max_connecting"):
            value = getattr(spec.mongodb, key)
            if value > pool:
                problems.append(f"mongodb.{key}: {value} exceeds the pool each process gets "
                                f"({pool} = {cb} // ({imax} x {w} x {servers}) - "
                                f"{MONGO_MONITOR_PER_SERVER})")
    if fds > opts.nofile:
        key = connections_key(spec)
        problems.append(f"{key}: {fds} open files per gunicorn worker "
                        f"exceed the pod's nofile limit of {opts.nofile} by {fds - opts.nofile}: "
                        f"lower {key}, or raise the limit in the image's "
                        "entrypoint (`ulimit -n`) and pass --nofile")
    return lines, problems


def warnings_for(spec: "Spec", name: str, opts: Options) -> list[str]:
    out = []
    if not opts.image:
        out.append(f"no --image: the Deployment runs `{name}:latest`; build an image with your "
                   "app, gunicorn and its worker class's package, and pass --image")
    for key, value in sorted(spec.app.env.items()):
        if _LOOPBACK.search(value):
            out.append(f"app.env.{key} = {value!r} names the loopback address: in a pod that is "
                       "the pod itself; point it at a Service (docs/scaling-out.md)")
        if looks_secret(key):
            out.append(f"app.env.{key} looks like a secret: the ConfigMap holds it in clear; "
                       "move it to a Secret (env valueFrom secretKeyRef)")
    out += worker_warnings(spec, name)
    if spec.deploy.release_command:
        ns = f" -n {opts.namespace}" if opts.namespace else ""
        out.append(f"deploy.release_command: apply Job {name}-release and wait for it "
                   f"(`kubectl{ns} wait --for=condition=complete job/{name}-release`) before the "
                   "Deployment; a Job cannot be changed, so delete it before the next release's (or "
                   "run it as a Helm pre-upgrade or Argo CD PreSync hook)")
    if spec.app.env_file:
        ns = f" -n {opts.namespace}" if opts.namespace else ""
        files = " ".join(f"--from-env-file={p.lstrip('-')}" for p in spec.app.env_file)
        keys = ", ".join(sorted(spec.app.file_env)) or "none read here"
        out.append(f"app.env_file: the Deployment loads Secret {name}-env-file, which this export "
                   f"does not write (its values stay out of the manifests); create it first: "
                   f"kubectl create secret generic {name}-env-file {files}{ns} (kubectl's env-file "
                   "format is plainer than systemd's: quotes stay part of the value and `;` "
                   "starts no comment; rewrite such lines for it). "
                   f"Keys: {keys}. A changed Secret restarts no pod: kubectl rollout restart "
                   f"deployment/{name}")
    if spec.nginx.socketio and "REDIS_URL" not in spec.app.env:
        out.append("nginx.socketio with more than one pod needs a shared Socket.IO message "
                   "queue: set app.env.REDIS_URL")
    if spec.nginx.tls_enabled:
        out.append(f"TLS: create the Secret first: kubectl create secret tls {name}-tls "
                   f"--cert={spec.nginx.tls_cert} --key={spec.nginx.tls_key}"
                   + (f" -n {opts.namespace}" if opts.namespace else ""))
    if spec.autoscale.enabled and spec.autoscale.bounds(spec.instances)[0] < 1:
        out.append("the autoscaler's min is 0: an HPA cannot scale to 0 pods; minReplicas is 1")
    t = spec.autoscale.target
    if spec.autoscale.enabled and t.cpu_wait_percent is not None:
        out.append("autoscale.target.cpu_wait_percent has no HPA equivalent" + (
            "" if any(v is not None for v in (t.cpu_utilization, t.in_flight_per_worker,
                                              t.p95_latency_seconds))
            else f"; with no other target the HPA follows CPU at its default "
                 f"{HPA_DEFAULT_CPU_UTILIZATION} %"))
    if spec.autoscale.enabled and (spec.autoscale.target.in_flight_per_worker is not None
                                   or spec.autoscale.target.p95_latency_seconds is not None):
        out.append("the HPA's in-flight and p95 metrics need a custom metrics adapter (e.g. "
                   "prometheus-adapter) serving them (docs/kubernetes.md)")
    if spec.workers == 1 and spec.gunicorn.max_requests == 0:
        out.append("one gunicorn worker per pod: while --max-requests replaces it the pod "
                   "serves nothing for a moment; with 2 or more workers per pod it keeps serving")
    return out


def worker_warnings(spec: "Spec", name: str) -> list[str]:
    """What a worker type's Deployment does not carry 1:1: the stop signal, the folder, its
    memory and connections outside the budgets, its env in clear; and types of another kind."""
    out = []
    workers = worker_names(spec, name)
    if workers:
        limit = spec.memory.worker_limit_mb
        deps = ", ".join(f"{name}-{part}" for part in workers.values())
        out.append(f"processes: the worker types run as Deployments {deps}; each pod is one "
                   f"process of its type, with a memory limit of memory.worker_limit_mb ({limit} "
                   "MiB) for the whole container (a Celery prefork pool's children included: "
                   "the kernel OOM-kills the pod at it, which the daemon never does to a worker "
                   "type). Their memory is not counted in the export's budgets; their MongoDB "
                   "pools are: the ConfigMap's MONGO_MAX_POOL_SIZE is shared by every process at "
                   "its max, as on the daemon")
    for key, part in workers.items():
        t = spec.processes[key]
        where = f"processes.{key}"
        if t.stop_signal != "TERM":
            out.append(f"{where}.stop_signal {t.stop_signal}: Kubernetes stops a container with "
                       f"SIGTERM (or the image's STOPSIGNAL); Deployment {name}-{part}'s preStop "
                       f"hook sends SIG{t.stop_signal} to PID 1 with sh's kill and waits for it to "
                       "exit, so the image needs a `sh` and the command must be PID 1 (an argv, "
                       "or a shell that execs it)")
        folder = worker_folder(spec, key)
        if folder is not None and not folder.startswith("/"):
            out.append(f"{where}.directory: the pods run it in {folder} inside the image's working "
                       "directory (the app's folder, as app.directory is on the host): the "
                       f"command is `sh -c 'cd \"$0\" && exec \"$@\"' {folder}` before the type's "
                       "argv, since workingDir must be absolute; build the image with that folder")
        elif folder is not None:
            out.append(f"{where}.directory {folder} is outside app.directory (the image's working "
                       "directory): the pods' workingDir is that path, which the image must hold")
        for env_key, value in sorted(t.env.items()):
            if _LOOPBACK.search(str(value)):
                out.append(f"{where}.env.{env_key} = {value!r} names the loopback address: in a "
                           "pod that is the pod itself; point it at a Service")
            if looks_secret(env_key):
                out.append(f"{where}.env.{env_key} looks like a secret: Deployment "
                           f"{name}-{part} holds it in clear; move it to a Secret")
    scaled = [(key, part) for key, part in workers.items() if spec.processes[key].autoscale.enabled]
    if scaled:
        hpas = ", ".join(f"{name}-{part}" for _, part in scaled)
        out.append(f"processes: HorizontalPodAutoscalers {hpas} scale their worker Deployments on the "
                   "External metric ultrascale_queue_depth (selector queue: the Redis list, `:` as "
                   "`_`), which a metrics adapter must serve: e.g. prometheus-adapter over "
                   "redis_exporter's key-size metric for the list, or use KEDA's Redis list scaler "
                   "(a ScaledObject) in place of these HPAs; without an adapter they hold minReplicas")
    jobs = worker_names(spec, name, "job")
    if jobs:
        crons = ", ".join(f"{name}-{part}" for part in jobs.values())
        out.append(f"processes: the jobs run as CronJobs {crons}. Their schedules are in the "
                   "daemon host's local time; a CronJob's are in the kube-controller-manager's "
                   "time zone unless you set its spec.timeZone (e.g. Etc/UTC). A Job run is "
                   "not retried (backoffLimit 0), as the daemon does not retry a run; with "
                   "catch_up: false a run more than 60 s late is skipped (startingDeadlineSeconds), "
                   "with catch_up: true Kubernetes starts one missed run, as the daemon does. "
                   "concurrencyPolicy Forbid keeps one run at a time in the cluster, as the "
                   "job's lock does on one host")
    return out
