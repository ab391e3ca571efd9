"""Deploys and rollbacks, applied: the thin layer over `core/rollout.py`'s pure decisions.

It changes only wanted state, like the API does, and only by telling the reconciler: which
release each port starts with (`Releases`, read at every spawn) and restart requests (`Restart`)
for instances that run another release than their port should. The reconciler's rolling restart then moves them one
at a time, each health-gated before it takes traffic. The deploy loop (`tick`, run guarded by
the supervisor) observes the instances, asks `rollout.advance` what follows, persists the
rollout in `<state_dir>/deploy.json` and raises the `deploy_failed` alert naming the figure
that failed.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ultrascaled.effects import release_command, releases
from ultrascaled.core import command, rollout, routes
from ultrascaled.core.control import ScaleRefused
from ultrascaled.core.reconciler.records import Releases, Restart
from ultrascaled.effects.releases import DeployState, ReleaseError
from ultrascaled.core.rollout import Rollout, Thresholds, show
from ultrascaled.core.states import State
from ultrascaled.core.traffic import TrafficSource

S = State


class Deployer:
    INTERVAL = 0.25   # seconds between looks at the fleet while a rollout runs (woken sooner by the API)

    def __init__(self, rec, events, clock, alerts, traffic: TrafficSource | None = None,
                 folders_in_use=lambda: set()):
        self.rec = rec
        self.folders_in_use = folders_in_use   # folders other processes run in (worker types): never pruned
        self.events = events
        self.clock = clock
        self.alerts = alerts
        self.state = DeployState()
        self.rollout: Rollout | None = None
        self.traffic = traffic             # the canary's figures (docs/deploys.md); None: health and crashes only
        self.preparing = False             # a release is being copied for a deploy
        self.last_verdict: dict | None = None
        self._route_base: dict[int, dict] | None = None   # per-route totals per port when the canary got ready
        self.last_outcome: dict | None = None   # how the last rollout ended
        self._wake = asyncio.Event()

    @property
    def spec(self):
        return self.rec.spec

    # ---- start: what the last daemon left --------------------------------------------------------

    def load(self) -> None:
        gone = releases.clean_incoming(self.spec)
        if gone:
            self.events.emit("release.incomplete_removed", folders=gone)
        state, problem = releases.load_state(self.spec)
        if problem:
            self.events.emit("deploy.state_ignored", level="warning", reason=problem)
        self.state = state
        if state.rollout:
            r, decided = rollout.resume(state.rollout, self.clock.now())
            self.rollout = r
            self.events.emit("deploy.resumed" if r else "deploy.state_ignored", level="warning",
                             reason=decided, release=show(r.target) if r else None)
            if r is not None and r.phase == rollout.REVERTING and r.failure == "interrupted":
                self.alerts.fire("deploy_failed", f"deploy of release {show(r.target)} was interrupted "
                                 f"by a daemon restart before its canary was judged; rolling back to "
                                 f"{show(r.source)}")
            self._save()
        self.rec.tell(Releases(self.rollout, self.state.current))

    def _save(self) -> None:
        self.state.rollout = self.rollout.persist() if self.rollout else None
        try:
            releases.save_state(self.spec, self.state)
        except OSError as exc:
            self.events.emit("deploy.state_write_failed", level="error", path=str(releases.state_path(self.spec)),
                             error=str(exc))

    # ---- what the API asks for ---------------------------------------------------------------------

    def _refuse_if_busy(self) -> None:
        if self.rec.shutting_down:
            raise ScaleRefused("shutting_down", "the daemon is stopping")
        if self.rollout is not None or self.preparing:
            what = ("a release is being prepared for another deploy (copied, or its "
                    "deploy.release_command run)" if self.rollout is None else
                    f"a {self.rollout.kind} to release {show(self.rollout.target)} is in progress "
                    f"({self.rollout.phase})")
            raise ScaleRefused("deploy_in_progress", f"{what}; wait for it to end (`ultrascalectl status`)")

    async def deploy(self, directory: str | None = None, release: str | None = None,
                     allow_data: bool = False) -> dict[str, Any]:
        """Copy `directory` into a new release (or take the named `release` from the releases
        folder) and start its rollout. The first deploy also copies app.directory as it is, so
        that a rollback returns to what ran. Raises ScaleRefused."""
        self._refuse_if_busy()
        if (directory is None) == (release is None):
            raise ScaleRefused("release_invalid", "give either a folder to deploy or a release name")
        if release is not None and release == self.state.current:
            raise ScaleRefused("already_current", f"release {release} is the current release already")
        self.preparing = True
        running = releases.directory_of(self.spec, self.state.current)
        notes: list = []
        try:
            base, rid = await asyncio.to_thread(self._prepare, directory, release, running, allow_data, notes)
        except ReleaseError as exc:
            raise ScaleRefused(exc.code, str(exc)) from None
        finally:
            self.preparing = False
            for name, fields in notes:
                self.events.emit(name, level="warning" if name == "release.data_copied" else "info", **fields)
        if base is not None:
            self.state.base = base
            self._save()
        if self.spec.deploy.release_command:
            self.preparing = True
            try:
                await self._release_command(rid)
            finally:
                self.preparing = False
        self._refuse_if_busy()
        if rid == self.state.current:
            raise ScaleRefused("already_current", f"release {rid} is the current release already")
        wanted = self.rec.wanted
        canary = wanted[0] if wanted else None
        now = self.clock.now()
        phase = rollout.CANARY if canary is not None else rollout.ROLLING
        self.rollout = Rollout("deploy", rid, self.state.current, phase, canary, now, self.clock.wall())
        self._save()
        self.events.emit("deploy.started", release=rid, previous=show(self.state.current), canary=canary,
                         soak_seconds=self.spec.deploy.soak_seconds,
                         figures="access log" if self.traffic is not None else
                         "none: the canary is judged on health and crashes at the end of the soak window")
        self._apply()
        self.wake()   # look at the fleet every INTERVAL from now on, not after the idle loop's 5 s
        return self.describe()

    async def _release_command(self, rid: str) -> None:
        """deploy.release_command in the new release's folder, before any process of it starts;
        a failure stops the deploy (ScaleRefused) with nothing moved and the output's tail."""
        spec = self.spec
        argv, cwd = list(spec.deploy.release_command), releases.directory_of(spec, rid)
        log_path = str(Path(spec.paths.log_dir) / f"release-{rid}.log")
        self.events.emit("deploy.release_command", release=rid, command=argv, cwd=cwd, log=log_path)
        try:
            out = await release_command.run(argv, cwd, command.release_env(spec, rid),
                                            spec.deploy.release_timeout, log_path)
        except OSError as exc:
            why = f"cannot be started: {exc.strerror or exc}"
            self.events.emit("deploy.release_command_failed", level="error", release=rid, command=argv, reason=why)
            raise ScaleRefused("release_command_failed", f"deploy.release_command {argv} {why}; "
                               "nothing was changed") from None
        if out.rc == 0:
            self.events.emit("deploy.release_command_done", release=rid, seconds=round(out.seconds, 2))
            return
        why = (f"exited with {out.rc}" if out.rc is not None and out.rc >= 0 else
               f"was killed by signal {-out.rc}" if out.rc is not None else
               f"ran past deploy.release_timeout ({spec.deploy.release_timeout:g}s) and was killed")
        self.events.emit("deploy.release_command_failed", level="error", release=rid, command=argv, rc=out.rc,
                         reason=why, seconds=round(out.seconds, 2), output=out.tail, log=log_path)
        raise ScaleRefused("release_command_failed", f"deploy.release_command {argv} {why} after "
                           f"{out.seconds:.1f}s; release {rid} was not rolled out, the fleet still runs "
                           f"{show(self.state.current)}. Its output ends with:\n{out.tail}\n(all of it: {log_path})")

    def _prepare(self, directory, release, running, allow_data, notes) -> tuple[str | None, str]:
        """(the copy of app.directory a first deploy keeps, the release to roll to), both on disk
        and linked to the shared data. Runs in a thread: reads the state, never writes it."""
        base = None
        kept = self.state.base is not None and Path(releases.directory_of(self.spec, self.state.base)).is_dir()
        if self.state.current is None and not kept:   # no copy from the start: keep what is there now
            base = releases.create(self.spec, self.spec.app.directory, running=running,
                                   allow_data=allow_data, notes=notes, snapshot=True)
            notes.append(("release.created", {"release": base, "source": self.spec.app.directory,
                                              "path": releases.directory_of(self.spec, base),
                                              "why": "the first deploy keeps what ran before it, for rollback"}))
        if directory is None:
            rid = releases.check_named(self.spec, release)
            releases.prepare(self.spec, rid, running, notes)
            return base, rid
        rid = releases.create(self.spec, directory, running=running, allow_data=allow_data, notes=notes)
        notes.append(("release.created", {"release": rid, "source": directory,
                                          "path": releases.directory_of(self.spec, rid)}))
        return base, rid

    def rollback(self) -> dict[str, Any]:
        self._refuse_if_busy()
        if self.state.current is None:
            raise ScaleRefused("no_rollback_target", "nothing to roll back to: no release was deployed "
                               "(the fleet runs app.directory)")
        target = self.state.previous
        if target is not None:
            notes: list = []
            try:
                releases.prepare(self.spec, target, releases.directory_of(self.spec, self.state.current), notes)
            except ReleaseError as exc:
                raise ScaleRefused(exc.code, str(exc)) from None
            finally:
                for name, fields in notes:
                    self.events.emit(name, **fields)
        now = self.clock.now()
        self.rollout = Rollout("rollback", target, self.state.current, rollout.ROLLING, None, now, self.clock.wall())
        self._save()
        self.events.emit("rollback.started", release=show(target), previous=show(self.state.current))
        self._apply()
        self.wake()
        return self.describe()

    def describe(self) -> dict[str, Any]:
        r = self.rollout
        return {
            "current": self.state.current, "previous": self.state.previous,
            "releases_dir": str(releases.releases_dir(self.spec)),
            "traffic_figures": self.traffic is not None,
            "rollout": None if r is None else {
                "kind": r.kind, "release": r.target, "from": r.source, "phase": r.phase, "canary": r.canary,
                "started": round(r.started_wall, 3),
                "canary_ready_for": (round(self.clock.now() - r.canary_ready_at, 1)
                                     if r.canary_ready_at is not None else None),
                "failure": r.failure, "failure_detail": r.failure_detail or None},
            "last_verdict": self.last_verdict,
            "last_outcome": self.last_outcome,
        }

    def listing(self) -> list[dict[str, Any]]:
        running: dict[str | None, list[int]] = {}
        for p, i in sorted(self.rec.instances.items()):
            if i.handle is not None:
                running.setdefault(i.release, []).append(p)
        out = []
        for r in releases.listing(self.spec):
            out.append({**r, "current": r["id"] == self.state.current, "previous": r["id"] == self.state.previous,
                        "base": r["id"] == self.state.base, "ports": running.get(r["id"], []),
                        "path": releases.directory_of(self.spec, r["id"])})
        if running.get(None) or self.state.current is None:
            out.insert(0, {"id": None, "created": None, "current": self.state.current is None,
                           "previous": self.state.current is not None and self.state.previous is None,
                           "ports": running.get(None, []), "path": self.spec.app.directory})
        return out

    # ---- the loop -------------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def keep_base(self) -> None:
        """While the fleet runs app.directory itself (no release yet): a copy of it as the
        instances start from it (the supervisor awaits it before any starts), the first deploy's rollback target, so that a rollback returns
        to what ran even when the folder is edited before that deploy (docs/deploys.md). The
        deploy.shared paths are left out (they are linked when the copy is rolled back to);
        a folder with undeclared data is not copied (the first deploy says what to declare)."""
        if self.state.current is not None or self.rollout is not None or self.preparing:
            return
        self.preparing = True
        notes: list = []
        try:
            base = await asyncio.to_thread(releases.create, self.spec, self.spec.app.directory,
                                           notes=notes, snapshot=True, link_data=False)
        except ReleaseError as exc:
            self.events.emit("release.base_not_kept", level="warning", reason=str(exc),
                             consequence="the first deploy copies app.directory as it is then")
            return
        finally:
            self.preparing = False
        old, self.state.base = self.state.base, base
        self._save()
        self.events.emit("release.created", release=base, source=self.spec.app.directory,
                         path=releases.directory_of(self.spec, base),
                         why="what the fleet starts from, kept for a rollback after the first deploy")
        if old and old not in (base, self.state.current, self.state.previous):
            try:
                await asyncio.to_thread(releases.remove, self.spec, old)
            except ReleaseError:
                pass    # already gone

    async def run(self, beat=lambda: None) -> None:
        while True:
            try:
                async with asyncio.timeout(self.INTERVAL if self.rollout else 5.0):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self.tick()
            beat()

    def tick(self) -> None:
        """One look at the fleet while a rollout runs."""
        r = self.rollout
        if r is None or self.rec.shutting_down:
            return
        now = self.clock.now()
        t = Thresholds.of(self.spec)
        views = self._views()
        step = rollout.advance(r, views, self.rec.wanted, now, t)
        if any(name == "deploy.canary_ready" for name, _, _ in step.events):
            self._route_base = self._route_totals()
        if step.judge_now and step.rollout is not None:
            verdict = rollout.judge(*self._figures(step.rollout, t), t, self._route_figures(step.rollout))
            self.last_verdict = {"release": r.target, "ok": verdict.ok, "figure": verdict.figure,
                                 "detail": verdict.detail, **verdict.figures}
            step = rollout.advance(step.rollout, views, self.rec.wanted, now, t, verdict)
        for name, level, fields in step.events:
            self.events.emit(name, level=level, **fields)
        if step.alert:
            self.alerts.fire("deploy_failed", step.alert)
        changed = step.rollout != r
        self.rollout = step.rollout
        if step.outcome:
            self.last_outcome = {"kind": r.kind, "release": r.target, "from": r.source, "outcome": step.outcome,
                                 "failure": r.failure, "detail": r.failure_detail or None,
                                 "seconds": round(now - r.started, 3), "ended": round(self.clock.wall(), 3)}
        if step.outcome == "completed":
            self.state.previous, self.state.current = r.source if r.source is not None else self.state.base, r.target
            self.alerts.resolve("deploy_failed", f"release {show(r.target)} is deployed")
            self._point_current()
            in_use = self.folders_in_use()
            doomed = releases.prune(self.spec, self.spec.deploy.keep_releases,
                                    {self.state.current, self.state.previous} |
                                    {r["id"] for r in releases.listing(self.spec)
                                     if releases.directory_of(self.spec, r["id"]) in in_use})
            if self.state.base in doomed:
                self.state.base = None
            if doomed:
                self.events.emit("release.pruned", releases=doomed)
        elif step.outcome == "rolled_back":
            self._point_current()
        if changed or step.outcome:
            self._save()
        self._apply()

    def _point_current(self) -> None:
        try:
            releases.point_current(self.spec, self.state.current)
        except OSError as exc:
            self.events.emit("release.current_link_failed", level="error", error=str(exc))

    def _views(self) -> dict[int, rollout.PortView]:
        applied = self.rec.applied
        nginx_on = self.spec.nginx.mode != "off"
        return {p: rollout.PortView(p, i.state.value, i.release, i.restart_requested, i.restarts,
                                    i.state is S.RUNNING and (p in applied or not nginx_on), i.reason,
                                    show(i.failed_release) if i.replace_failed else None, i.successor is not None)
                for p, i in self.rec.instances.items()}

    def _figures(self, r: Rollout, t: Thresholds):
        if self.traffic is None or r.canary is None:
            return None, None
        canary = self.traffic.window(r.canary, t.soak_seconds)
        others = [p for p in self.rec.wanted if p != r.canary]
        if hasattr(self.traffic, "window_of"):   # accesslog: their latency histograms merged
            return canary, self.traffic.window_of(others, t.soak_seconds) if others else None
        return canary, rollout.combine([self.traffic.window(p, t.soak_seconds) for p in others])

    def _route_totals(self) -> dict[int, dict] | None:
        if self.traffic is None or not hasattr(self.traffic, "route_totals"):
            return None                  # the app's own metrics: no routes
        return {p: self.traffic.route_totals([p]) for p in self.rec.wanted}

    def _route_figures(self, r: Rollout):
        """(canary, old instances) per route since the canary got ready, or None."""
        base, now = self._route_base, self._route_totals()
        if base is None or now is None or r.canary is None:
            return None
        old: dict[str, tuple[int, int]] = {}
        for port, totals in now.items():
            if port != r.canary:
                for route, (n, bad) in routes.delta(base.get(port, {}), totals).items():
                    n0, bad0 = old.get(route, (0, 0))
                    old[route] = (n0 + n, bad0 + bad)
        return routes.delta(base.get(r.canary, {}), now.get(r.canary, {})), old

    def _apply(self) -> None:
        """Tell the reconciler which release each port starts with, and ask a restart of every
        instance that runs another one (the reconciler rolls them one at a time)."""
        self.rec.tell(Releases(self.rollout, self.state.current))
        moving = tuple(p for p, inst in self.rec.instances.items()
                       if inst.state in (S.RUNNING, S.STARTING, S.FATAL) and not inst.restart_requested
                       and inst.release != (want := self.rec.release_for(p)[0])
                       and not (inst.replace_failed and inst.failed_release == want))
        if moving:
            self.rec.tell(Restart(moving))
