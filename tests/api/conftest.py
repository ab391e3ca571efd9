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

    def make(spec_overrides=None):
        d = Daemon(tmp_path, spec_overrides, nginx=False)
        made.append(d)
        return d.start()
    yield make
    for d in made:
        d.cleanup()
