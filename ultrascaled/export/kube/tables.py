"""Where each spec key goes (CARRIED, NOT_CARRIED), what nothing carries, and the doc's tables.

NO_EQUIVALENT is said in every export's header. docs/kubernetes.md holds the two tables as
:func:`tables_markdown` makes them; `python -m ultrascaled.export.kube docs/kubernetes.md`
rewrites that copy (__main__.py).
"""
from __future__ import annotations

# Spec key -> the manifest field(s) it sets. tests/kube checks both tables against the spec's
# declared keys, and that changing a carried key changes the manifests while changing a key
# that is not carried leaves them alone.
CARRIED: dict[str, str] = {
    "name": "metadata.name and labels of every object; gunicorn --name",
    "app.module": "Deployment container args (the WSGI callable)",
    "app.config": "Deployment container args -c (relative to the image's working directory)",
    "app.env": "ConfigMap NAME-env, loaded with envFrom; its digest on the pod template",
    "app.env_file": "Deployment envFrom secretRef NAME-env-file, before the ConfigMap (app.env "
                    "wins); the operator creates the Secret: its values are never written into "
                    "the manifests",
    "instances.count": "Deployment spec.replicas when autoscale is off (else the HPA owns it)",
    "instances.min": "HPA minReplicas when autoscale.min_replicas is null (at least 1)",
    "instances.max": "HPA maxReplicas when autoscale.max_replicas is null; MONGO_MAX_POOL_SIZE",
    "instances.base_port": "containerPort, gunicorn --bind, PORT",
    "gunicorn.workers": "gunicorn --workers; memory limit; CPU request; MONGO_MAX_POOL_SIZE",
    "gunicorn.worker_class": "gunicorn --worker-class (a dotted class as given: the image needs "
                             "its package; no orphan shim, the container ends with its master)",
    "gunicorn.threads": "gunicorn --threads (gthread)",
    "gunicorn.worker_connections": "gunicorn --worker-connections",
    "gunicorn.timeout": "gunicorn --timeout",
    "gunicorn.graceful_timeout": "gunicorn --graceful-timeout; terminationGracePeriodSeconds",
    "gunicorn.keepalive": "gunicorn --keep-alive",
    "gunicorn.max_requests": "gunicorn --max-requests (the export's default when 0)",
    "gunicorn.max_requests_jitter": "gunicorn --max-requests-jitter",
    "gunicorn.args": "Deployment container args",
    "deploy.release_command": "Job NAME-release (its container command, the Deployment's image "
                              "and environment), to run to completion before the Deployment rolls",
    "deploy.release_timeout": "Job NAME-release activeDeadlineSeconds",
    "processes": "one Deployment NAME-TYPE per `kind: worker` type and one CronJob NAME-TYPE per "
                 "`kind: job` (TYPE lower case, `_` as `-`; two types that become one name are "
                 "refused), labelled ultrascale/process-type: TYPE; no Service, PDB or HPA",
    "processes.NAME.kind": "`worker`: a Deployment NAME-TYPE; `job`: a CronJob NAME-TYPE",
    "processes.NAME.command": "Deployment NAME-TYPE container command (args after a `cd` with a "
                              "directory inside app.directory)",
    "processes.NAME.count": "Deployment NAME-TYPE spec.replicas; strategy Recreate at 1 (never "
                            "two), else one pod at a time (maxSurge 0, maxUnavailable 1), as the "
                            "daemon rolls a type",
    "processes.NAME.env": "Deployment NAME-TYPE container env, over the envFrom of the web pods "
                          "(app.env_file's Secret, the ConfigMap)",
    "processes.NAME.directory": "inside app.directory (the image's working directory): the "
                                "command enters that folder with sh (`cd`, then exec; workingDir "
                                "must be absolute); outside it: workingDir",
    "processes.NAME.stop_signal": "other than TERM: a preStop exec hook that sends it to PID 1 "
                                  "(`kill -s SIG 1`, sh's builtin) and waits for the exit",
    "processes.NAME.graceful_timeout": "Deployment NAME-TYPE terminationGracePeriodSeconds "
                                       "(whole seconds, >= 1)",
    "processes.NAME.start_seconds": "Deployment NAME-TYPE minReadySeconds (whole seconds)",
    # a worker type's autoscaling on its queue's depth: HorizontalPodAutoscaler NAME-TYPE
    "processes.NAME.autoscale.queue.list": "HPA NAME-TYPE External metric ultrascale_queue_depth, selector queue: LIST (`:` as `_`)",
    "processes.NAME.autoscale.queue.rq": "as queue.list, the list rq:queue:NAME",
    "processes.NAME.autoscale.queue.celery": "as queue.list, the list NAME",
    "processes.NAME.autoscale.target": "HPA NAME-TYPE External metric target averageValue",
    "processes.NAME.autoscale.min": "HPA NAME-TYPE minReplicas (at least 1)",
    "processes.NAME.autoscale.max": "HPA NAME-TYPE maxReplicas",
    "processes.NAME.autoscale.tolerance": "HPA NAME-TYPE behavior scaleUp/scaleDown tolerance",
    "processes.NAME.max": "counted in MONGO_MAX_POOL_SIZE (each process at its max holds a pool); "
                          "`kubectl scale` has no upper bound",
    "processes.NAME.memory_limit_mb": "the worker pod's (or job pod's) container memory request and "
                                      "limit, in place of memory.worker_limit_mb; the kernel "
                                      "OOM-kills the pod at it, where the daemon restarts gracefully",
    "processes.NAME.schedule": "CronJob NAME-TYPE spec.schedule (cron's five fields and @ macros, as the daemon reads them)",
    "processes.NAME.every": "CronJob NAME-TYPE spec.schedule when cron can say it (a whole number of minutes or hours dividing an hour or a day; shorter or odd periods are refused)",
    "processes.NAME.concurrency": "CronJob NAME-TYPE spec.concurrencyPolicy (Forbid, Replace, Allow)",
    "processes.NAME.timeout": "the Job's activeDeadlineSeconds (whole seconds)",
    "processes.NAME.catch_up": "false: CronJob startingDeadlineSeconds 60 (a later run is skipped); true: unset (one missed run starts)",
    "processes.NAME.history": "CronJob successfulJobsHistoryLimit and failedJobsHistoryLimit (at most 10: each kept Job keeps its pod)",
    "health.path": "startupProbe, readinessProbe, livenessProbe httpGet.path",
    "health.start_timeout": "startupProbe failureThreshold (periodSeconds 1)",
    "health.interval": "readinessProbe and livenessProbe periodSeconds (whole seconds, >= 1)",
    "health.timeout": "probes' timeoutSeconds (whole seconds, >= 1)",
    "health.failures": "readinessProbe and livenessProbe failureThreshold",
    "restart.drain_seconds": "preStop sleep (whole seconds, >= 1); terminationGracePeriodSeconds",
    "memory.worker_limit_mb": "container memory request and limit = (workers + 1) x limit; a "
                              "worker type's pod: one x limit",
    "mongodb.connection_budget": "MONGO_MAX_POOL_SIZE in the ConfigMap",
    "mongodb.min_pool_size": "MONGO_MIN_POOL_SIZE in the ConfigMap",
    "mongodb.max_connecting": "MONGO_MAX_CONNECTING in the ConfigMap",
    "nginx.upstream_name": "session cookie name of the Socket.IO Ingress",
    "nginx.balance": "Ingress load-balance (least_conn -> ewma, else round_robin)",
    "nginx.proxy_next_upstream": "Ingress proxy-next-upstream",
    "nginx.proxy_next_upstream_tries": "Ingress proxy-next-upstream-tries",
    "nginx.proxy_next_upstream_timeout": "Ingress proxy-next-upstream-timeout (seconds)",
    "nginx.rate_limit": "Ingress limit-rps",
    "nginx.rate_limit_burst": "Ingress limit-burst-multiplier = ceil(burst / rate)",
    "nginx.conn_limit": "Ingress limit-connections",
    "nginx.tls_cert": "Ingress spec.tls (Secret NAME-tls, created by the operator)",
    "nginx.tls_key": "Ingress spec.tls (Secret NAME-tls, created by the operator)",
    "nginx.server_name": "Ingress rules[].host (none for `_`) and tls hosts",
    "nginx.proxy_connect_timeout": "Ingress proxy-connect-timeout (seconds)",
    "nginx.proxy_send_timeout": "Ingress proxy-send-timeout (seconds)",
    "nginx.proxy_read_timeout": "Ingress proxy-read-timeout (seconds), main Ingress",
    "nginx.client_max_body_size": "Ingress proxy-body-size",
    "nginx.client_body_buffer_size": "Ingress client-body-buffer-size",
    "nginx.proxy_buffering": "Ingress proxy-buffering, main Ingress",
    "nginx.proxy_buffer_size": "Ingress proxy-buffer-size",
    "nginx.proxy_buffers": "Ingress proxy-buffers-number",
    "nginx.socketio": "Service and Ingress NAME-socketio (sticky, WebSocket)",
    "nginx.socketio_path": "Ingress NAME-socketio path",
    "nginx.socketio_read_timeout": "Ingress NAME-socketio proxy-read-timeout (seconds)",
    "autoscale.enabled": "a HorizontalPodAutoscaler (none when off: replicas = instances.count)",
    "autoscale.min_replicas": "HPA minReplicas (at least 1)",
    "autoscale.max_replicas": "HPA maxReplicas",
    "autoscale.tolerance": "HPA behavior.scaleUp/scaleDown.tolerance (where the cluster has the "
                           "HPAConfigurableTolerance feature; else its cluster-wide 10 %)",
    "autoscale.target.cpu_utilization": "HPA Resource cpu averageUtilization = target / "
                                        "--cpu-per-worker (the request is per worker)",
    "autoscale.target.in_flight_per_worker": "HPA Pods metric http_requests_in_flight, "
                                             "averageValue = target x workers",
    "autoscale.target.p95_latency_seconds": "HPA Object metric http_request_duration_seconds_p95 "
                                            "of the Ingress",
    **{f"autoscale.behavior.{d}.{k}": f"HPA behavior.{hpa_d}.{v}"
       for d, hpa_d in (("scale_up", "scaleUp"), ("scale_down", "scaleDown"))
       for k, v in (("stabilization_window_seconds", "stabilizationWindowSeconds"),
                    ("select_policy", "selectPolicy"),
                    ("pods_value", "policies[type=Pods].value"),
                    ("pods_period_seconds", "policies[type=Pods].periodSeconds"),
                    ("percent_value", "policies[type=Percent].value (rounded up)"),
                    ("percent_period_seconds", "policies[type=Percent].periodSeconds"))},
}

# Spec key -> why it is not carried (and what carries its intent instead, if anything).
NOT_CARRIED: dict[str, str] = {
    "app.directory": "the image's working directory is the app's folder; build the image so",
    "app.python": "the image's `python` runs gunicorn",
    "instances.host": "gunicorn binds 0.0.0.0 in the pod; the pod's IP is its address",
    "instances.spares": "no warm pod takes over a port: a Deployment's extra replicas serve; "
                        "readiness gates the Service instead (docs/spares.md)",
    "gunicorn.concurrency": "no gunicorn option: the export's open-files check per worker "
                            "counts with it, as the daemon's budgets do",
    "health.probe_interval": "Kubernetes probes at most once a second (startupProbe period 1 s)",
    "restart.backoff_initial": "the kubelet restarts a container with its own back-off "
                               "(10 s doubling to 5 min)",
    "restart.backoff_max": "the kubelet's crash back-off caps at 5 min",
    "restart.fatal_crashes": "a pod never goes FATAL: CrashLoopBackOff retries for ever",
    "restart.fatal_window": "no crash-loop alert: watch kube_pod_container_status_restarts_total",
    "memory.fleet_budget_mb": "no per-fleet memory budget: checked at export time for "
                              "instances.max pods (a namespace ResourceQuota can enforce one)",
    "memory.metric": "the container limit counts the cgroup's memory, not RSS/USS/PSS per worker",
    "memory.sample_interval": "no per-worker RSS watchdog in a pod: gunicorn max_requests with "
                              "jitter recycles workers, the memory limit OOM-kills the container",
    "memory.samples_over": "no per-worker RSS watchdog in a pod (see memory.sample_interval)",
    "memory.relaxed_interval": "no per-worker RSS watchdog in a pod (see memory.sample_interval)",
    "memory.relaxed_below": "no per-worker RSS watchdog in a pod (see memory.sample_interval)",
    "logs.max_bytes": "containers log to stdout; the kubelet rotates (containerLogMaxSize)",
    "logs.backups": "the kubelet keeps containerLogMaxFiles rotated logs",
    "paths.state_dir": "no daemon state: the Deployment and the HPA hold the desired count",
    "paths.log_dir": "containers log to stdout",
    "nginx.mode": "ingress-nginx replaces the managed or system nginx",
    "nginx.listen": "the controller's ports (80/443 on its Service)",
    "nginx.listen_host": "the controller's Service decides where it listens",
    "nginx.binary": "the controller's image",
    "nginx.prefix": "the controller's files",
    "nginx.upstream_file": "the controller writes its upstreams from the Service's endpoints",
    "nginx.reload_command": "the controller reloads itself",
    "nginx.test_command": "the controller checks its own configuration",
    "nginx.system_pid_file": "the controller's process",
    "nginx.keepalive": "controller-wide: upstream-keepalive-connections in its ConfigMap",
    "nginx.keepalive_requests": "controller-wide: upstream-keepalive-requests in its ConfigMap",
    "nginx.keepalive_timeout": "controller-wide: upstream-keepalive-timeout in its ConfigMap",
    "nginx.max_fails": "the controller's balancer takes endpoints from readiness, not max_fails",
    "nginx.fail_timeout": "the controller's balancer takes endpoints from readiness",
    "nginx.upstream_servers": "the controller's endpoints follow the pods' readiness; no static range",
    "nginx.rate_limit_status": "controller-wide: limit-req-status-code in its ConfigMap",
    "nginx.limit_zone_size": "the controller sizes its limit zones itself",
    "nginx.tls_listen": "the controller's HTTPS port",
    "nginx.tls_protocols": "controller-wide: ssl-protocols in its ConfigMap",
    "nginx.http2": "controller-wide: use-http2 in its ConfigMap",
    "nginx.worker_processes": "controller-wide: worker-processes in its ConfigMap",
    "nginx.worker_connections": "controller-wide: max-worker-connections in its ConfigMap",
    "nginx.worker_rlimit_nofile": "controller-wide: the controller's own limits",
    "nginx.worker_shutdown_timeout": "controller-wide: worker-shutdown-timeout in its ConfigMap",
    "nginx.user": "the controller's image",
    "nginx.error_log_level": "controller-wide: error-log-level in its ConfigMap",
    "nginx.access_log": "the controller logs to stdout (enable-access-log per Ingress)",
    "nginx.client_header_timeout": "controller-wide: client-header-timeout in its ConfigMap",
    "nginx.client_body_timeout": "controller-wide: client-body-timeout in its ConfigMap",
    "nginx.send_timeout": "controller-wide: no per-Ingress send_timeout",
    "nginx.client_keepalive_timeout": "controller-wide: keep-alive in its ConfigMap",
    "nginx.stub_status": "the controller serves its own Prometheus metrics",
    "nginx.stub_status_path": "the controller serves its own Prometheus metrics",
    "nginx.stub_status_allow": "the controller serves its own Prometheus metrics",
    "nginx.socketio_balance": "hash and ip_hash both become cookie affinity (sticky behind NAT "
                              "and load balancers, where client addresses collide)",
    "nginx.traffic_log": "the daemon's per-instance figures from nginx's log: ingress-nginx's "
                         "Prometheus metrics give requests, 5xx and latency per Ingress",
    "nginx.traffic_window": "the daemon's per-instance figures (see nginx.traffic_log)",
    "nginx.reload_timeout": "the controller reloads itself",
    "nginx.command_timeout": "the controller reloads itself",
    "nginx.start_timeout": "the controller's own probes",
    "nginx.stop_timeout": "the controller's own termination grace period",
    "nginx.extra_http": "raw nginx snippets: ingress-nginx refuses snippet annotations by default "
                        "(allow-snippet-annotations), and they are a security risk",
    "nginx.extra_server": "raw nginx snippets: see nginx.extra_http",
    "nginx.extra_upstream": "raw nginx snippets: see nginx.extra_http",
    "nginx.static": "files nginx serves from the release folder: in a cluster the image serves "
                    "them (WhiteNoise) or a CDN/object store does",
    "nginx.static_max_age": "see nginx.static",
    "nginx.proxy_error_log_level": "the controller's error log: nginx.error_log_level",
    "api.host": "ultrascaled's control API: the Kubernetes API server replaces it",
    "api.port": "ultrascaled's control API",
    "api.token_file": "ultrascaled's control API: RBAC on the Kubernetes API replaces it",
    "api.metrics_token_file": "ultrascaled's control API",
    "api.viewer_token_file": "ultrascaled's control API",
    "dashboard.enabled": "ultrascaled's dashboard (GET /ui): chart the Prometheus metrics instead",
    "dashboard.history_seconds": "ultrascaled's dashboard",
    "dashboard.sample_interval": "ultrascaled's dashboard",
    "plan.urls": "what `ultrascalectl plan --measure` loads, before any deployment: nothing runs it in a cluster",
    "processes.NAME.min": "the lowest count `ultrascalectl scale` takes: `kubectl scale` has no "
                          "bounds",
    "processes.NAME.ready": "not exported yet: a worker's readiness probe (tcpSocket, httpGet, exec) would be its equivalent",
    "processes.NAME.ready_timeout": "with processes.NAME.ready: not exported yet",
    "processes.NAME.after": "Kubernetes starts Deployments in no order; an init container that waits would be its equivalent",
    "processes.NAME.requires": "not exported yet: an init container that waits for the addresses (a job: a check before its command) would be its equivalent",
    "processes.NAME.autoscale.queue.redis": "not in the HPA: the metrics adapter reads Redis (the export's warning says how)",
    "processes.NAME.autoscale.interval": "the HPA controller's sync period (kube-controller-manager "
                                         "--horizontal-pod-autoscaler-sync-period, 15 s), not per object",
    "api.tls_cert": "ultrascaled's control API",
    "api.tls_key": "ultrascaled's control API",
    "api.allowed_hosts": "ultrascaled's control API",
    "api.idle_timeout": "ultrascaled's control API",
    "api.max_connections": "ultrascaled's control API",
    "api.max_followers": "ultrascaled's control API",
    "alerts.evaluation_interval": "ultrascaled's alert rules: write Prometheus alerting rules",
    "alerts.min_requests": "ultrascaled's alert rules",
    "alerts.p95_latency_seconds": "ultrascaled's alert rules",
    "alerts.p95_latency_for": "ultrascaled's alert rules",
    "alerts.error_rate": "ultrascaled's alert rules",
    "alerts.error_rate_for": "ultrascaled's alert rules",
    "alerts.route_error_rate": "ultrascaled's alert rules",
    "alerts.route_error_rate_for": "ultrascaled's alert rules",
    "alerts.route_min_requests": "ultrascaled's alert rules",
    "alerts.cpu_percent": "ultrascaled's alert rules",
    "alerts.cpu_for": "ultrascaled's alert rules",
    "alerts.memory_budget_fraction": "ultrascaled's alert rules",
    "alerts.memory_for": "ultrascaled's alert rules",
    "alerts.cache_hit_rate": "ultrascaled's alert rules",
    "alerts.cache_hit_rate_for": "ultrascaled's alert rules",
    "alerts.db_connections_fraction": "ultrascaled's alert rules",
    "alerts.db_connections_for": "ultrascaled's alert rules",
    "alerts.webhook_url": "ultrascaled's alert rules: Alertmanager sends notifications",
    "alerts.webhook_timeout": "ultrascaled's alert rules",
    "alerts.webhook_retries": "ultrascaled's alert rules",
    "alerts.webhook_backoff": "ultrascaled's alert rules",
    "alerts.webhook_queue": "ultrascaled's alert rules",
    "autoscale.target.cpu_wait_percent": "no HPA metric for run-queue delay (a pod's CPU "
                                         "request reserves its cores); with no other target "
                                         "the HPA follows CPU at its default 80 %",
    "autoscale.sync_period_seconds": "controller-wide: kube-controller-manager "
                                     "--horizontal-pod-autoscaler-sync-period (15 s)",
    "autoscale.metrics_window_seconds": "metrics-server's resolution (and the custom metrics "
                                        "adapter's queries) decide the window",
    "autoscale.stale_after_seconds": "the HPA leaves a pod without metrics out, counting it so "
                                     "that it holds back the change; not configurable",
    "autoscale.host_cpu_saturation_percent": "a pod gets the CPU it requests on its node; the "
                                             "scheduler and a cluster autoscaler, not the HPA, "
                                             "deal with full nodes",
    # ultrascaled's releases and judged canary (docs/deploys.md): a Deployment's rolling update
    # (or Argo Rollouts / Flagger for a canary judged on metrics) does this in a cluster
    "deploy.releases_dir": "releases are container images: a new image tag is a new release",
    "deploy.keep_releases": "the Deployment's revisionHistoryLimit keeps old ReplicaSets",
    "deploy.shared": "data the app writes belongs on a PersistentVolumeClaim mounted at those "
                     "paths, which a pod's image never holds; not generated",
    "deploy.soak_seconds": "no judged canary in a Deployment's rolling update (Argo Rollouts or "
                           "Flagger analysis do that)",
    "deploy.min_requests": "no judged canary in a Deployment (see deploy.soak_seconds)",
    "deploy.max_error_rate_increase": "no judged canary in a Deployment (see deploy.soak_seconds)",
    "deploy.max_p95_ratio": "no judged canary in a Deployment (see deploy.soak_seconds)",
    "deploy.p95_slack_seconds": "no judged canary in a Deployment (see deploy.soak_seconds)",
    "deploy.route_p_value": "no judged canary in a Deployment (see deploy.soak_seconds)",
    "deploy.route_min_errors": "no judged canary in a Deployment (see deploy.soak_seconds)",
}

# Said in every export's header: what the daemon does that no manifest field can.
# A queue-autoscaled worker type's HPA takes its behavior as the web HPA takes autoscale.behavior:
# each key is carried where the web's is.
for _d in ("scale_up", "scale_down"):
    for _b in ("stabilization_window_seconds", "select_policy", "pods_value", "pods_period_seconds",
               "percent_value", "percent_period_seconds"):
        _web = f"autoscale.behavior.{_d}.{_b}"
        (CARRIED if _web in CARRIED else NOT_CARRIED)[f"processes.NAME.autoscale.behavior.{_d}.{_b}"] = \
            f"as {_web} for the web: HPA NAME-TYPE behavior"


NO_EQUIVALENT = [
    "per-worker memory recycling (memory.worker_limit_mb watched per worker, K samples over): "
    "carried as gunicorn --max-requests with --max-requests-jitter, and a container memory "
    "limit of (workers + 1) x memory.worker_limit_mb that OOM-kills the whole pod",
    "the fleet budgets (memory.fleet_budget_mb, mongodb.connection_budget, open files): no "
    "admission check refuses a scale-up past them; checked here for instances.max pods",
    "FATAL after restart.fatal_crashes failed starts: the kubelet retries with back-off for ever",
    "ultrascaled's API, events and alert rules: use the Kubernetes API, events and Prometheus",
]


def tables_markdown() -> str:
    """The two tables of docs/kubernetes.md ("Where every spec key goes"), from CARRIED and
    NOT_CARRIED; tests/kube keeps the doc current."""
    rows = ["| spec key | manifest field |", "| --- | --- |"]
    rows += [f"| `{k}` | {v.replace('|', '/')} |" for k, v in sorted(CARRIED.items())]
    rows += ["", "| spec key | not carried, because |", "| --- | --- |"]
    rows += [f"| `{k}` | {v.replace('|', '/')} |" for k, v in sorted(NOT_CARRIED.items())]
    return "\n".join(rows) + "\n"


DOC_BEGIN, DOC_END = "<!-- kube-tables:begin -->\n", "<!-- kube-tables:end -->"


def with_tables(doc: str) -> str:
    """`doc` with the text between the kube-tables markers replaced by tables_markdown()."""
    head, sep, rest = doc.partition(DOC_BEGIN)
    _, sep2, tail = rest.partition(DOC_END)
    if not sep or not sep2:
        raise ValueError(f"no {DOC_BEGIN.strip()} ... {DOC_END} markers")
    return head + DOC_BEGIN + tables_markdown() + DOC_END + tail
