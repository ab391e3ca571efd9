"""MongoDB settings and client kwargs (pure), the per-process handle, and a real-server test
that runs only when MONGODB_URI is set (MongoDB cannot be installed here; never faked)."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from app import mongo
from app.mongo import MongoHandle, MongoSettingsError, client_kwargs, settings_from_env

from app_helpers import PYTHON, REPO, mongo_server_selections
from support import needs


def test_defaults_without_env():
    s = settings_from_env({})
    assert not s.configured
    kw = client_kwargs(s)
    assert kw["maxPoolSize"] == 10 and kw["minPoolSize"] == 0 and kw["maxConnecting"] == 2
    assert kw["retryReads"] is True and kw["retryWrites"] is True
    assert kw["readPreference"] == "primaryPreferred"
    assert kw["compressors"] == "zlib" and kw["zlibCompressionLevel"] == 1
    assert kw["serverSelectionTimeoutMS"] == 2000 and kw["connectTimeoutMS"] == 2000


@pytest.mark.parametrize("env, key, expected", [
    ({"MONGO_MAX_POOL_SIZE": "7"}, "maxPoolSize", 7),
    ({"MONGO_MIN_POOL_SIZE": "2"}, "minPoolSize", 2),
    ({"MONGO_MAX_CONNECTING": "5"}, "maxConnecting", 5),
    ({"MONGO_READ_PREFERENCE": "secondaryPreferred"}, "readPreference", "secondaryPreferred"),
    ({"MONGO_RETRY_WRITES": "false"}, "retryWrites", False),
    ({"MONGO_RETRY_READS": "0"}, "retryReads", False),
    ({"MONGO_COMPRESSORS": "zstd,zlib"}, "compressors", "zstd,zlib"),
    ({"MONGO_SOCKET_TIMEOUT_MS": "1500"}, "socketTimeoutMS", 1500),
    ({"MONGO_WAIT_QUEUE_TIMEOUT_MS": "250"}, "waitQueueTimeoutMS", 250),
    ({"ULTRASCALE_INSTANCE": "3"}, "appname", "ultrascale-3"),
])
def test_env_overrides_reach_client_kwargs(env, key, expected):
    assert client_kwargs(settings_from_env(env))[key] == expected


def test_no_compressors_when_set_empty():
    kw = client_kwargs(settings_from_env({"MONGO_COMPRESSORS": ""}))
    assert "compressors" not in kw and "zlibCompressionLevel" not in kw


@pytest.mark.parametrize("uri, env_db, expected", [
    ("mongodb://h:27017/shop?replicaSet=rs0", None, "shop"),
    ("mongodb://h:27017/", None, "ultrascale"),
    ("mongodb://h:27017", None, "ultrascale"),
    ("mongodb://h/shop", "other", "other"),
])
def test_database_name_from_uri_or_mongodb_db(uri, env_db, expected):
    env = {"MONGODB_URI": uri}
    if env_db:
        env["MONGODB_DB"] = env_db
    assert settings_from_env(env).database == expected


def test_every_bad_variable_is_reported_at_once_by_name():
    with pytest.raises(MongoSettingsError) as info:
        settings_from_env({"MONGO_MAX_POOL_SIZE": "lots", "MONGO_READ_PREFERENCE": "fastest",
                           "MONGO_RETRY_READS": "maybe", "MONGO_COMPRESSORS": "lz4",
                           "MONGODB_URI": "http://x"})
    text = "\n".join(info.value.errors)
    assert len(info.value.errors) == 5
    for name in ("MONGO_MAX_POOL_SIZE", "MONGO_READ_PREFERENCE", "MONGO_RETRY_READS",
                 "MONGO_COMPRESSORS", "MONGODB_URI"):
        assert name in text


def test_min_pool_larger_than_max_is_rejected():
    with pytest.raises(MongoSettingsError, match="MONGO_MIN_POOL_SIZE"):
        settings_from_env({"MONGO_MAX_POOL_SIZE": "2", "MONGO_MIN_POOL_SIZE": "5"})


def test_max_connecting_larger_than_max_pool_or_below_one_is_rejected():
    with pytest.raises(MongoSettingsError, match="MONGO_MAX_CONNECTING: must be <= MONGO_MAX_POOL_SIZE"):
        settings_from_env({"MONGO_MAX_POOL_SIZE": "4", "MONGO_MAX_CONNECTING": "20"})
    with pytest.raises(MongoSettingsError, match="MONGO_MAX_CONNECTING: must be 1-10000"):
        settings_from_env({"MONGO_MAX_CONNECTING": "0"})


def test_kwargs_are_accepted_by_pymongo_with_the_pool_the_daemon_computed():
    # No server needed: MongoClient validates option names and values at construction.
    import pymongo
    s = settings_from_env({"MONGODB_URI": "mongodb://127.0.0.1:1/x", "MONGO_MAX_POOL_SIZE": "7",
                           "MONGO_MIN_POOL_SIZE": "1", "MONGO_MAX_CONNECTING": "3",
                           "MONGO_READ_PREFERENCE": "nearest"})
    client = pymongo.MongoClient(s.uri, **client_kwargs(s))
    try:
        assert client.options.pool_options.max_pool_size == 7
        assert client.options.pool_options.min_pool_size == 1
        assert client.options.pool_options.max_connecting == 3
        assert client.read_preference.mongos_mode == "nearest"
        assert client.options.retry_writes is True
    finally:
        client.close()


def test_handle_state_without_uri_is_not_configured_and_client_refuses():
    h = MongoHandle(settings_from_env({}))
    assert h.state() == "not_configured"
    with pytest.raises(RuntimeError, match="MONGODB_URI"):
        h.client()


def test_handle_state_for_unreachable_server_is_down_without_waiting():
    h = MongoHandle(settings_from_env({"MONGODB_URI": "mongodb://127.0.0.1:1/x"}))
    try:
        with mongo_server_selections() as selections:
            h.state()                               # the first call creates the client
            for _ in range(20):
                assert h.state() == "down"
        assert selections == []                     # no server selection, none of its 2 s waits: /health never waits
    finally:
        h.close()


def test_the_server_selection_spy_sees_a_selection():
    """What the "no server selection" checks rely on: pymongo logs every selection it starts."""
    from pymongo import MongoClient
    client = MongoClient("mongodb://127.0.0.1:1/x", serverSelectionTimeoutMS=1, connect=False)
    try:
        with mongo_server_selections() as selections:
            with pytest.raises(Exception, match="127.0.0.1:1"):
                client.x.items.find_one({"_id": 1})
        assert len(selections) == 1 and '"operation": "find"' in selections[0]
    finally:
        client.close()


def test_one_client_per_process_and_reset_after_fork_makes_a_new_one():
    made = []
    h = MongoHandle(settings_from_env({"MONGODB_URI": "mongodb://127.0.0.1:1/x"}),
                    client_factory=lambda s: made.append(object()) or made[-1])
    assert h.client() is h.client()
    h.reset_after_fork()
    assert h.client() is made[1]
    assert len(made) == 2


def test_indexes_are_declared_in_one_place_as_valid_index_models():
    models = mongo.index_models()
    assert "items" in models
    docs = [m.document for m in models["items"]]
    assert {"sku_unique", "updated_at_desc"} <= {d["name"] for d in docs}


def test_ensure_indexes_command_without_uri_fails_clearly():
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    out = subprocess.run([PYTHON, "-m", "app.mongo", "ensure-indexes"], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "MONGODB_URI is not set" in out.stderr


def test_show_settings_command_prints_kwargs_from_env():
    env = dict(os.environ, MONGO_MAX_POOL_SIZE="4")
    env.pop("MONGODB_URI", None)
    out = subprocess.run([PYTHON, "-m", "app.mongo", "show-settings"], cwd=str(REPO), env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert '"maxPoolSize": 4' in out.stdout


def test_real_server_indexes_and_items_endpoint(monkeypatch):
    from app.wsgi import create_app
    from app_wsgi_helpers import call

    uri = needs.mongodb()
    db_name = f"ultrascale_test_{uuid.uuid4().hex[:8]}"
    env = {"MONGODB_URI": uri, "MONGODB_DB": db_name}
    handle = MongoHandle(settings_from_env(env))
    try:
        db = handle.database()
        created = mongo.ensure_indexes(db)
        assert "sku_unique" in created["items"]
        db.items.insert_one({"_id": "42", "sku": "A-42", "name": "answer"})
        app = create_app(env, mongo_handle=handle)
        status, body = call(app, "/items/42")
        assert status == 200 and body["item"]["name"] == "answer" and body["source"] == "loader"
        assert call(app, "/items/42")[1]["source"] == "memory"
        assert call(app, "/items/nope")[0] == 404
        assert call(app, "/health")[1]["mongodb"] == "ok"
    finally:
        try:
            handle.client().drop_database(db_name)
        finally:
            handle.close()
