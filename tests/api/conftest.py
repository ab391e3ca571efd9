# Helpers live in api_helpers.py (a uniquely named module, so test dirs do not collide).
import pytest

from api_helpers import Api, FakeFleet, settings


@pytest.fixture
def fleet(tmp_path):
    return FakeFleet(tmp_path)


@pytest.fixture
def make_api(fleet):
    made = []

    def make(**kw):
        reload, audit, alerts = kw.pop("reload", None), kw.pop("audit", None), kw.pop("alerts", None)
        api = Api(kw.pop("fleet", fleet), settings(**kw), reload=reload, audit=audit, alerts=alerts)
        made.append(api)
        return api
    yield make
    for api in made:
        api.close()


@pytest.fixture
def api(make_api):
    return make_api()


@pytest.fixture
def make_live(fleet):
    from api_helpers import LiveApi
    made = []

    def make(ssl_context=None, audit=None, **kw):
        live = LiveApi(kw.pop("fleet", fleet), settings(**kw), ssl_context, audit)
        made.append(live)
        return live
    yield make
    for live in made:
        live.close()


@pytest.fixture
def make_daemon_api(tmp_path):
    """A real ultrascaled (no nginx) on free ports, stopped by pid afterwards."""
    from ultrascaled.harness import Daemon
    made = []

    def make(spec_overrides=None, prefix: tuple[str, ...] = ()):
        """`prefix`: a command to run ultrascaled under (it execs the rest of its arguments)."""
        import subprocess
        from ultrascaled.harness import BIN
        d = Daemon(tmp_path, spec_overrides, nginx=False)
        made.append(d)
        if not prefix:
            return d.start()
        with open(d.log_path, "ab") as log:
            d.proc = subprocess.Popen([*prefix, str(BIN / "ultrascaled"), "--spec", str(d.spec_path),
                                       "--log-format", "json"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                      env=d.env, start_new_session=True)
        d.wait_until(lambda f: f["ready"] == f["desired"] == len(f["instances"]) and all(
            i["serving"] for i in f["instances"]), timeout=60, what="fleet ready")
        return d
    yield make
    for d in made:
        d.cleanup()
