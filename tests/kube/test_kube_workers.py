"""`processes:` worker types as Deployments NAME-TYPE: command, environment, replicas, grace
period, the preStop hook of a stop signal other than TERM, the folder, the names Kubernetes takes,
the official schemas; a spec without processes exports what it did before. One test (marked
integration) runs the exported command and hook for real, in a PID namespace of their own, as a
container's."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import needs
from test_kube import (CASES, api_server_rules, exported, load, newest_minor_versions, set_key,
                       validate)  # noqa: F401 (validate is a fixture)
from ultrascaled.export import kube
from ultrascaled.spec import parse_spec
from ultrascaled.spec.schema import ProcessType
from ultrascaled.surface import cli

TWO_TYPES = """name: Shop
app: {env: {QUEUE: web-default, BROKER_URL: "redis://redis.cache:6379/0"}}
memory: {worker_limit_mb: 640}
processes:
  celery_worker:
    command: [celery, -A, shop, worker, --loglevel, INFO]
    count: 3
    max: 3                     # each type at its max fits memory.fleet_budget_mb (spec/budget.py)
    env: {QUEUE: emails, C_FORCE_ROOT: "0"}
    stop_signal: INT
    graceful_timeout: 45.5
    start_seconds: 2.2
  rq: {command: [rq, worker, high, low], max: 4}
"""


def two_types(opts: kube.Options = kube.Options(cpu_per_worker="250m")) -> kube.Export:
    return kube.export(parse_spec(TWO_TYPES, base_dir=Path("/srv/shop"), cpu_count=2), opts)


def by_name(ex: kube.Export) -> dict[str, dict]:
    return {f"{m['kind']}/{m['metadata']['name']}": m for m in ex.manifests}


def container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


def worker_deployments(ex: kube.Export) -> list[dict]:
    return [m for m in ex.manifests
            if m["kind"] == "Deployment" and kube.PROCESS_TYPE in m["metadata"]["labels"]]


# ---- what the Deployments say -------------------------------------------------------------

def test_two_worker_types_export_two_more_deployments_after_the_web_one():
    ex = two_types()
    names = [f"{m['kind']}/{m['metadata']['name']}" for m in ex.manifests]
    assert [n for n in names if n.startswith("Deployment/")] == [
        "Deployment/shop", "Deployment/shop-celery-worker", "Deployment/shop-rq"]
    assert names.index("ConfigMap/shop-env") < names.index("Deployment/shop-rq")
    assert not any(n.split("/")[1] in ("shop-celery-worker", "shop-rq")
                   for n in names if not n.startswith("Deployment/")), \
        "a worker serves no port: no Service, PDB or HPA of its own"


def test_the_command_env_replicas_and_timings_are_the_types():
    objs = by_name(two_types())
    web, dep = container(objs["Deployment/shop"]), objs["Deployment/shop-celery-worker"]
    c, pod = container(dep), dep["spec"]["template"]["spec"]
    assert c["command"] == ["celery", "-A", "shop", "worker", "--loglevel", "INFO"]
    assert "args" not in c and "workingDir" not in c and "ports" not in c
    assert c["image"] == web["image"] and c["envFrom"] == web["envFrom"]
    # the type's env in the container's env, which Kubernetes puts over envFrom (the ConfigMap's
    # QUEUE=web-default): as the daemon puts processes.NAME.env over app.env
    assert c["env"] == [{"name": "C_FORCE_ROOT", "value": "0"}, {"name": "QUEUE", "value": "emails"}]
    assert objs["ConfigMap/shop-env"]["data"]["QUEUE"] == "web-default"
    assert not any(e["name"] == "ULTRASCALE_PROCESS" for e in c["env"])
    assert dep["spec"]["replicas"] == 3
    assert pod["terminationGracePeriodSeconds"] == 46          # ceil(45.5)
    assert dep["spec"]["minReadySeconds"] == 3                 # ceil(2.2)
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "640Mi"},
                              "limits": {"memory": "640Mi"}}   # one process at the per-worker limit
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert dep["spec"]["template"]["metadata"]["annotations"] == \
        objs["Deployment/shop"]["spec"]["template"]["metadata"]["annotations"]   # env digest
    rq = objs["Deployment/shop-rq"]
    assert container(rq)["command"] == ["rq", "worker", "high", "low"] and "env" not in container(rq)
    assert rq["spec"]["replicas"] == 1 and rq["spec"]["strategy"] == {"type": "Recreate"}
    assert rq["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    assert rq["spec"]["minReadySeconds"] == 1


def test_a_stop_signal_other_than_term_is_sent_by_a_prestop_hook_and_said():
    ex = two_types()
    objs = by_name(ex)
    hook = container(objs["Deployment/shop-celery-worker"])["lifecycle"]["preStop"]
    assert hook == {"exec": {"command": [
        "sh", "-c", "kill -s INT 1; while kill -0 1 2>/dev/null; do sleep 1; done"]}}
    assert "lifecycle" not in container(objs["Deployment/shop-rq"])   # TERM: the kubelet's own
    assert any(w.startswith("processes.celery_worker.stop_signal INT:") and "needs a `sh`" in w
               for w in ex.warnings)
    assert not any(w.startswith("processes.rq.stop_signal") for w in ex.warnings)


def test_worker_pods_have_labels_of_their_own_that_no_web_selector_matches():
    objs = by_name(two_types())
    dep = objs["Deployment/shop-celery-worker"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[kube.PROCESS_TYPE] == "celery-worker"
    assert dep["metadata"]["labels"] == {**objs["Deployment/shop"]["metadata"]["labels"],
                                         kube.PROCESS_TYPE: "celery-worker"}
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "shop-celery-worker", kube.PROCESS_TYPE: "celery-worker"}
    web_selectors = [objs["Service/shop"]["spec"]["selector"],
                     objs["PodDisruptionBudget/shop"]["spec"]["selector"]["matchLabels"],
                     objs["Deployment/shop"]["spec"]["selector"]["matchLabels"]]
    for sel in web_selectors:
        assert any(pod_labels.get(k) != v for k, v in sel.items()), sel
    other = objs["Deployment/shop-rq"]["spec"]["selector"]["matchLabels"]
    assert any(pod_labels.get(k) != v for k, v in other.items())


def test_every_object_with_worker_types_validates_against_the_two_newest_schemas(validate):
    for ex in (two_types(), two_types(kube.Options(namespace="prod", image="r.example/shop:1"))):
        for version in newest_minor_versions():
            for m in ex.manifests:
                assert validate(m, version) == version, (m["kind"], m["metadata"]["name"], version)
        for m in ex.manifests:
            assert api_server_rules(m) == [], (m["kind"], m["metadata"]["name"])
    # and with every optional part: a folder inside and one outside the app, a release Job
    spec = parse_spec(TWO_TYPES.replace("rq: {", "rq: {directory: /opt/rq, ")
                      .replace("    start_seconds: 2.2\n", "    start_seconds: 0\n    directory: jobs/\n")
                      + "deploy: {release_command: [python, manage.py, migrate]}\n",
                      base_dir=Path("/srv/shop"), cpu_count=2)
    for m in kube.export(spec).manifests:
        assert validate(m, newest_minor_versions()[-1])
        assert api_server_rules(m) == [], (m["kind"], m["metadata"]["name"])


def test_the_stream_of_worker_types_reads_back_without_yaml_aliases():
    ex = two_types()
    text = kube.render_stream(ex)
    assert "&id" not in text and "*id" not in text
    assert list(yaml.safe_load_all(text)) == ex.manifests


# ---- the folder ----------------------------------------------------------------------------

def folder_spec(directory: str | None):
    entry = {"command": ["python", "worker.py"]}
    if directory is not None:
        entry["directory"] = directory
    return parse_spec(f"processes: {{w: {json.dumps(entry)}}}\n", base_dir=Path("/srv/app"),
                      cpu_count=2)


@pytest.mark.parametrize("directory", [None, ".", "/srv/app", "/srv/app/"])
def test_the_apps_own_folder_is_the_images_working_directory(directory):
    c = container(worker_deployments(kube.export(folder_spec(directory)))[0])
    assert c["command"] == ["python", "worker.py"] and "workingDir" not in c and "args" not in c


@pytest.mark.parametrize("directory, inside", [("worker", "worker"), ("./a/b/", "a/b"),
                                               ("/srv/app/tasks", "tasks")])
def test_a_folder_inside_the_app_is_entered_by_the_command_since_working_dir_is_absolute(
        directory, inside):
    ex = kube.export(folder_spec(directory))
    c = container(worker_deployments(ex)[0])
    assert c["command"] == ["sh", "-c", 'cd "$0" && exec "$@"', inside]
    assert c["args"] == ["python", "worker.py"] and "workingDir" not in c
    assert any(w.startswith("processes.w.directory: the pods run it in " + inside)
               for w in ex.warnings)


@pytest.mark.parametrize("directory", ["/opt/worker", "../elsewhere", "/srv/application"])
def test_a_folder_outside_the_app_is_the_working_dir_and_said(directory):
    ex = kube.export(folder_spec(directory))
    c = container(worker_deployments(ex)[0])
    expected = os.path.normpath(os.path.join("/srv/app", directory))
    assert c["command"] == ["python", "worker.py"] and c["workingDir"] == expected
    assert any(w.startswith(f"processes.w.directory {expected} is outside app.directory")
               for w in ex.warnings)


# ---- names -----------------------------------------------------------------------------------

def with_types(*names: str, fleet: str = "shop"):
    spec = set_key(load("fleet"), "name", fleet)
    return set_key(spec, "processes", {n: ProcessType(command=["python", "w.py"]) for n in names})


def test_two_types_that_become_one_name_are_refused_naming_both_keys():
    with pytest.raises(kube.ExportError) as exc:
        kube.export(with_types("Mail_Worker", "mail-worker", "rq"))
    msg = str(exc.value)
    assert "processes.Mail_Worker and processes.mail-worker" in msg
    assert "'shop-mail-worker'" in msg and "rename one" in msg


def test_the_command_refuses_a_name_clash_with_exit_2_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "fleet.yaml"
    spec.write_text("processes:\n  mail_worker: {command: [python, a.py], max: 2}\n"
                    "  Mail-Worker: {command: [python, b.py], max: 2}\n")
    out_dir = tmp_path / "out"
    assert cli.main(["export", "kubernetes", "--spec", str(spec), "-o", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "processes.Mail-Worker and processes.mail_worker" in err
    assert not out_dir.exists()


@pytest.mark.parametrize("name, fleet", [("worker_", "shop"), ("-w", "shop"), ("_w", "shop"),
                                         ("w" * 59, "shop"), ("w" * 9, "f" * 54)])
def test_a_type_name_kubernetes_cannot_take_is_refused_naming_its_key(name, fleet):
    with pytest.raises(kube.ExportError, match=rf"^processes\.{name}: .*rename the type"):
        kube.export(with_types(name, fleet=fleet))


def test_the_longest_type_name_beside_the_fleets_is_taken():
    ex = kube.export(with_types("w" * 58, fleet="s"))      # 1 + 1 + 58 = 60 <= 63
    assert worker_deployments(ex)[0]["metadata"]["name"] == "s-" + "w" * 58
    ex = kube.export(with_types("w" * (63 - 5), fleet="shop"))
    assert len(worker_deployments(ex)[0]["metadata"]["name"]) == 63


# ---- a spec without processes -----------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_a_spec_without_processes_exports_only_the_web_fleet(name):
    """The golden files (test_kube) are the output from before worker types were exported, kept
    as they were; and adding worker types adds their Deployments and changes nothing else."""
    ex = exported(name)
    assert not worker_deployments(ex)
    assert [m["kind"] for m in ex.manifests].count("Deployment") == 1
    spec = set_key(load(name), "processes", {"celery": ProcessType(command=["celery", "worker"]),
                                             "rq": ProcessType(command=["rq", "worker"])})
    more = kube.export(spec, CASES[name])

    def but_the_pool(ms):   # each worker process holds a MongoDB pool too: the shared one shrinks
        ms = json.loads(json.dumps(ms))
        for m in ms:
            m.get("data", {}).pop("MONGO_MAX_POOL_SIZE", None)
            m.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).pop(kube.ENV_HASH, None)
        return ms
    assert but_the_pool([m for m in more.manifests if m not in worker_deployments(more)]) == but_the_pool(ex.manifests)
    pools = [int(m["data"]["MONGO_MAX_POOL_SIZE"]) for m in (ex.manifests[0], more.manifests[0])]
    assert pools[1] <= pools[0], pools
    assert len(worker_deployments(more)) == 2
    assert not any("not exported yet" in w for w in more.warnings)


def test_the_warnings_name_the_worker_deployments_and_their_env_in_clear():
    spec = set_key(load("fleet"), "processes", {"w": ProcessType(
        command=["python", "w.py"], env={"API_TOKEN": "x", "CACHE": "redis://127.0.0.1:6379"})})
    ex = kube.export(spec)
    assert any(w.startswith("processes: the worker types run as Deployments demo-w;")
               and "not counted in the export's budgets" in w for w in ex.warnings)
    assert any(w.startswith("processes.w.env.API_TOKEN looks like a secret") for w in ex.warnings)
    assert any(w.startswith("processes.w.env.CACHE = ") for w in ex.warnings)
    assert not any(w.startswith("processes") for w in exported("fleet").warnings)


# ---- run for real: the command and the hook in a PID namespace, as in a container ------------

WORKER = """import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda *a: got.append("INT"))
signal.signal(signal.SIGTERM, lambda *a: got.append("TERM"))
print(os.getpid(), os.getcwd(), os.environ.get("QUEUE"), flush=True)
while not got:
    time.sleep(0.02)
time.sleep(1.2)          # a warm shutdown: finish the task in hand
print(",".join(got), flush=True)
"""


def namespaces() -> tuple[str, str]:
    """unshare and nsenter (util-linux), and a kernel that lets this user make the namespaces."""
    unshare, nsenter = needs.tools("unshare", "nsenter")
    probe = subprocess.run([unshare, "-rpf", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        needs.skip(f"no unprivileged user and PID namespaces here: {probe.stderr.strip()}")
    return unshare, nsenter


@pytest.mark.integration
def test_the_exported_worker_runs_as_pid_1_in_its_folder_and_its_hook_stops_it_with_int(tmp_path):
    """The container's command and args with the folder wrapper, in a PID namespace whose
    working directory is the image's; the preStop command run in that namespace (as the
    kubelet's exec runs it in the container) sends SIGINT to PID 1, then waits for it to exit, so
    that the kubelet's SIGTERM after the hook cannot reach the worker during its warm shutdown
    (RQ, for one, takes a second signal as "stop now")."""
    unshare, nsenter = namespaces()
    workdir = tmp_path / "image-workdir"
    (workdir / "worker").mkdir(parents=True)
    (workdir / "worker" / "w.py").write_text(WORKER)
    spec = parse_spec("processes:\n  w: {command: [python, w.py], directory: worker, "
                      "stop_signal: INT, env: {QUEUE: emails}}\n",
                      base_dir=Path("/srv/app"), cpu_count=2)
    c = container(worker_deployments(kube.export(spec))[0])
    argv = [a if a != "python" else sys.executable for a in c["command"] + c["args"]]
    env = {"PATH": os.environ["PATH"], **{e["name"]: e["value"] for e in c["env"]}}
    proc = subprocess.Popen([unshare, "-rpf", "--mount-proc", *argv], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid, cwd, queue = proc.stdout.readline().split()
        assert (pid, cwd, queue) == ("1", str(workdir / "worker"), "emails")  # exec'd: PID 1
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        worker = os.pidfd_open(int(children[0]))   # alive: it waits for its signal
        hook = c["lifecycle"]["preStop"]["exec"]["command"]
        started = time.monotonic()
        done = subprocess.run([nsenter, "-t", children[0], "-U", "-p", "--preserve-credentials",
                               *hook], capture_output=True, timeout=20)
        waited = time.monotonic() - started
        try:   # what the kubelet does once the hook returns (unless the worker has exited)
            signal.pidfd_send_signal(worker, signal.SIGTERM)
        except ProcessLookupError:
            pass
        finally:
            os.close(worker)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.readline().strip() == "INT"          # INT only, no TERM after it
        assert waited >= 1.0, "the hook returned before the worker had finished"
        # the hook ends with PID 1 (the namespace's processes are killed when it exits)
        assert done.returncode in (0, -signal.SIGKILL, 128 + signal.SIGKILL)
        grace = worker_deployments(kube.export(spec))[0]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        assert waited < grace == 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def test_a_changed_type_changes_only_its_own_deployment():
    spec = parse_spec(TWO_TYPES, base_dir=Path("/srv/shop"), cpu_count=2)
    before = by_name(kube.export(spec))
    rq = dataclasses.replace(spec.processes["rq"], count=4)
    after = by_name(kube.export(set_key(spec, "processes", {**spec.processes, "rq": rq})))
    assert [k for k in before if before[k] != after[k]] == ["Deployment/shop-rq"]
    assert after["Deployment/shop-rq"]["spec"]["strategy"]["type"] == "RollingUpdate"
