"""Real Redis topologies on free loopback ports for the integration tests: a six-node Redis
Cluster (three primaries, three replicas, made with ``redis-cli --cluster create``) and a
Sentinel setup (one primary, two replicas, three sentinels). Every process is started here, is
remembered by its ``Popen`` and is ended by pid in ``stop()``, which the fixtures call in a
``finally`` (also when a test fails). Ports come from ``harness.free_port_block`` (below the
ephemeral range, so a client connection cannot take one between the check and the bind).

``redis-server`` and ``redis-cli`` are Debian's (``scripts/setup`` installs them); a sentinel is
``redis-server <conf> --sentinel``, so no separate redis-sentinel package is needed.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from support.harness import free_port_block
from support.waiting import wait_for

# Failure detection as tests want it: a dead primary is noticed within about a second.
# (Redis's defaults are 15 s for cluster-node-timeout and 30 s for down-after-milliseconds.)
CLUSTER_NODE_TIMEOUT_MS = 1000
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000
SENTINEL_SERVICE = "ultrascale"


def redis_exe(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)


def missing_tools() -> list[str]:
    return [n for n in ("redis-server", "redis-cli") if redis_exe(n) is None]


def command(port: int, *args: str, timeout: float = 2.0, password: str | None = None) -> str:
    """One command through redis-cli (no client library involved), its output as text."""
    auth = ["-a", password, "--no-auth-warning"] if password else []
    out = subprocess.run([redis_exe("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *auth, *args],
                         capture_output=True, text=True, timeout=timeout)
    return out.stdout


def ping(port: int) -> bool:
    """Up: answers PING, or refuses it for want of a password (NOAUTH)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


class Node:
    """One redis-server process; ``start()`` again after ``kill()`` reuses port, dir and config."""

    def __init__(self, port: int, workdir: Path, args: list[str], password: str | None = None):
        self.port = port
        self.password = password
        self.dir = workdir
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def alive(self) -> bool:
        """Running and not stopped by pause(): a node that can answer."""
        return self.proc is not None and self.proc.poll() is None and not self.paused

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive else None

    def start(self) -> "Node":
        self.paused = False
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen([redis_exe("redis-server"), *self.args], cwd=str(self.dir),
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server on {self.port} exited {self.proc.returncode}: "
                                     + (self.dir / "server.log").read_text(errors="replace")[-2000:])
            return ping(self.port)
        wait_for(up, timeout=timeout, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL by pid: the crash a failover has to survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP by pid: a hung server (the kernel still accepts connections; nothing answers)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """SIGCONT (in case a test stopped it) and SIGTERM, by pid; stop() waits."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def info(self, section: str = "") -> dict[str, str]:
        args = ["INFO", section] if section else ["INFO"]
        return info_fields(command(self.port, *args, password=self.password))


def stop_all(nodes: list[Node]) -> None:
    """Signal every node first, then wait for each (shutdowns overlap); by pid, never by name."""
    for n in nodes:
        n.terminate()
    for n in nodes:
        n.stop()


def _server_args(port: int, extra: list[str]) -> list[str]:
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "notice", *extra]


class LocalRedisCluster:
    """Six redis-server processes in cluster mode (3 primaries + 1 replica each)."""

    SIZE = 6

    def __init__(self, workdir: Path, password: str | None = None,
                 node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS):
        """``password``: every node requires it (``requirepass``, and ``masterauth`` for
        replication). ``node_timeout_ms``: how long a silent node goes before it is failed over."""
        self.workdir = workdir
        self.password = password
        base = free_port_block(2 * self.SIZE)       # data ports, then their cluster-bus ports
        self.ports = list(range(base, base + self.SIZE))
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.nodes = [Node(p, workdir / f"node-{p}", _server_args(p, [*auth,
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(p + self.SIZE),
            "--cluster-node-timeout", str(node_timeout_ms),
            # a replica of a dead primary may always take over (the default refuses a replica
            # whose link to its primary was down for long, which a test cannot wait out)
            "--cluster-replica-validity-factor", "0",
        ]), password) for p in self.ports]

    @property
    def url(self) -> str:
        creds = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{creds}" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def start(self) -> "LocalRedisCluster":
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_ready()
        auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
        out = subprocess.run([redis_exe("redis-cli"), *auth, "--cluster", "create",
                              *[f"127.0.0.1:{p}" for p in self.ports],
                              "--cluster-replicas", "1", "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({out.returncode}):\n"
                               f"{out.stdout}\n{out.stderr}")
        self.wait_healthy()
        return self

    def alive_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def cluster_state(self, node: Node) -> str:
        out = command(node.port, "CLUSTER", "INFO", password=self.password)
        return info_fields(out).get("cluster_state", "")

    def roles(self) -> dict[int, str]:
        """port -> "master" / "slave" as the live nodes see themselves."""
        return {n.port: n.info("replication").get("role", "?") for n in self.alive_nodes()}

    def primaries(self) -> list[Node]:
        roles = self.roles()
        return [n for n in self.alive_nodes() if roles.get(n.port) == "master"]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and three live primaries cover the slots."""
        alive = self.alive_nodes()
        return (len(self.primaries()) == 3
                and all(self.cluster_state(n) == "ok" for n in alive))

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_for(self.healthy, timeout=timeout, interval=0.2, what="cluster_state:ok on every live node")

    def primary_for(self, key: str) -> Node:
        """The live primary serving ``key``'s slot, as a live node's CLUSTER NODES tells."""
        asker = self.primaries()[0]
        slot = int(command(asker.port, "CLUSTER", "KEYSLOT", key, password=self.password).strip())
        by_port = {n.port: n for n in self.nodes}
        for line in command(asker.port, "CLUSTER", "NODES", password=self.password).splitlines():
            parts = line.split()
            flags = parts[2].split(",")
            if "master" not in flags or "fail" in flags:
                continue
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            for rng in parts[8:]:
                if rng.startswith("["):            # a slot being migrated
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return by_port[port]
        raise AssertionError(f"no primary serves {key!r} (slot {slot})")

    def restart(self, node: Node) -> None:
        """Bring a killed node back (it rejoins, as a replica of whoever took over)."""
        node.start()
        node.wait_ready()
        self.wait_healthy()

    def heal(self) -> None:
        """Every node running and answering again (paused ones resumed, killed ones restarted),
        every slot served."""
        for n in self.nodes:
            if n.paused:
                n.resume()
            elif not n.alive:
                n.start()
        for n in self.nodes:
            n.wait_ready()
        self.wait_healthy()

    def stop(self) -> None:
        stop_all(self.nodes)


class LocalRedisSentinel:
    """One primary, ``replicas`` replicas and three sentinels watching service ``SENTINEL_SERVICE``."""

    def __init__(self, workdir: Path, replicas: int = 2):
        self.workdir = workdir
        base = free_port_block(1 + replicas + 3)
        self.data_ports = list(range(base, base + 1 + replicas))
        self.sentinel_ports = list(range(base + 1 + replicas, base + 4 + replicas))
        primary = self.data_ports[0]
        self.nodes = [Node(p, workdir / f"redis-{p}",
                           _server_args(p, [] if p == primary else ["--replicaof", "127.0.0.1",
                                                                    str(primary)]))
                      for p in self.data_ports]
        self.sentinels = []
        for p in self.sentinel_ports:
            d = workdir / f"sentinel-{p}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"      # sentinels rewrite their own config: one file each
            conf.write_text(
                f"port {p}\nbind 127.0.0.1\ndaemonize no\ndir {d}\n"
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n")
            self.sentinels.append(Node(p, d, [str(conf), "--sentinel"]))

    @property
    def url(self) -> str:
        return ("redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
                + f"/0/{SENTINEL_SERVICE}")

    def start(self) -> "LocalRedisSentinel":
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_ready()
        wait_for(lambda: all(n.info("replication").get("master_link_status") == "up"
                             for n in self.nodes[1:]), timeout=30, what="replicas in sync")
        for s in self.sentinels:
            s.start()
        for s in self.sentinels:
            s.wait_ready()
        self.wait_settled(self.data_ports[0])
        return self

    def heal(self) -> int:
        """Every node up again (a killed one restarts and the sentinels make it a replica),
        one agreed primary, which is returned."""
        for n in self.nodes + self.sentinels:
            if n.paused:
                n.resume()
            elif not n.alive:
                n.start()
        for n in self.nodes + self.sentinels:
            n.wait_ready()
        return self.wait_settled()

    def primary_port_by_sentinels(self) -> set[int]:
        ports = set()
        for s in self.sentinels:
            if s.alive:
                out = command(s.port, "SENTINEL", "get-master-addr-by-name", SENTINEL_SERVICE).split()
                if len(out) == 2:
                    ports.add(int(out[1]))
        return ports

    def primary(self) -> Node:
        ports = self.primary_port_by_sentinels()
        assert len(ports) == 1, f"sentinels disagree about the primary: {ports}"
        return next(n for n in self.nodes if n.port in ports)

    def wait_settled(self, primary_port: int | None = None, timeout: float = 60.0) -> int:
        """Every sentinel names the same live primary, which says role:master and sees the
        other sentinels (num-other-sentinels == 2), so a failover can be agreed on."""
        def settled():
            ports = self.primary_port_by_sentinels()
            if len(ports) != 1:
                return None
            port = next(iter(ports))
            if primary_port is not None and port != primary_port:
                return None
            node = next(n for n in self.nodes if n.port == port)
            if not node.alive or node.info("replication").get("role") != "master":
                return None
            for s in self.sentinels:
                fields = command(s.port, "SENTINEL", "master", SENTINEL_SERVICE).split("\n")
                d = dict(zip(fields[0::2], fields[1::2]))
                if d.get("num-other-sentinels") != "2" or "s_down" in d.get("flags", ""):
                    return None
            return port
        return wait_for(settled, timeout=timeout, interval=0.2, what="sentinels agreeing on a live primary")

    def stop(self) -> None:
        stop_all(self.sentinels + self.nodes)
