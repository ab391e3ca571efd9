# Helpers live in api_helpers.py (a uniquely named module, so test dirs do not collide).
import pytest

from api_helpers import Api, FakeFleet, LiveApi, settings


def made_and_closed(build, close):
    """A fixture body: yields `make(**kw)`, which builds with `build`; `close`s all it made."""
    made = []

    def make(*args, **kw):
        made.append(build(*args, **kw))
        return made[-1]
    yield make
    for thing in made:
        close(thing)


@pytest.fixture
def fleet(tmp_path):
    return FakeFleet(tmp_path)


@pytest.fixture
def make_api(fleet):
    """The app on aiohttp's test server (in-process, milliseconds a request)."""
    def build(reload=None, audit=None, alerts=None, **kw):
        return Api(kw.pop("fleet", fleet), settings(**kw), reload=reload, audit=audit, alerts=alerts)
    yield from made_and_closed(build, Api.close)


@pytest.fixture
def api(make_api):
    return make_api()


@pytest.fixture
def make_live(fleet):
    """The app served the daemon's way (ApiServer) on a real loopback socket."""
    def build(ssl_context=None, audit=None, **kw):
        return LiveApi(kw.pop("fleet", fleet), settings(**kw), ssl_context, audit)
    yield from made_and_closed(build, LiveApi.close)


@pytest.fixture
def make_daemon_api(tmp_path):
    """A real ultrascaled (no nginx) on free ports, stopped by pid afterwards. `prefix`: a
    command to run it under (one that execs the rest of its arguments)."""
    import subprocess

    from support.harness import BIN, Daemon

    def build(spec_overrides=None, prefix: tuple[str, ...] = ()):
        d = Daemon(tmp_path, spec_overrides, nginx=False)
        try:
            if not prefix:
                return d.start()
            with open(d.log_path, "ab") as log:
                d.proc = subprocess.Popen([*prefix, str(BIN / "ultrascaled"), "--spec", str(d.spec_path),
                                           "--log-format", "json"], stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL, env=d.env, start_new_session=True)
            d.wait_until(lambda f: f["ready"] == f["desired"] == len(f["instances"]) and all(
                i["serving"] for i in f["instances"]), timeout=60, what="fleet ready")
            return d
        except BaseException:
            d.cleanup()  # it was not handed out, so the fixture would not end it
            raise
    yield from made_and_closed(build, Daemon.cleanup)
