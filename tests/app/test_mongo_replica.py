"""MongoDB replica sets and mongodb+srv://: the client settings built from a URI (pure), and a
real-server test that runs only when MONGODB_URI names a replica set (never faked)."""
from __future__ import annotations

import uuid

import pytest

from app.mongo import (FAILOVER_SERVER_SELECTION_TIMEOUT_MS, MongoHandle, MongoSettingsError,
                       client_kwargs, settings_from_env)

from support import needs


@pytest.mark.parametrize("uri, topology, timeout_ms", [
    ("mongodb://db1:27017/shop", "single", 2000),
    ("mongodb://db1:27017,db2:27017,db3:27017/shop", "hosts", FAILOVER_SERVER_SELECTION_TIMEOUT_MS),
    ("mongodb://db1:27017/shop?replicaSet=rs0", "replica_set", FAILOVER_SERVER_SELECTION_TIMEOUT_MS),
    ("mongodb://db1:27017?replicaSet=rs0", "replica_set", FAILOVER_SERVER_SELECTION_TIMEOUT_MS),
    ("mongodb+srv://u:p%40ss@cluster0.example.net/shop?retryWrites=true&w=majority", "srv",
     FAILOVER_SERVER_SELECTION_TIMEOUT_MS),
])
def test_server_selection_outlasts_an_election_when_the_uri_can_fail_over(uri, topology, timeout_ms):
    s = settings_from_env({"MONGODB_URI": uri})
    assert s.topology == topology
    assert client_kwargs(s)["serverSelectionTimeoutMS"] == timeout_ms
    assert s.replicated is (topology != "single")


def test_replica_set_from_env_makes_a_single_seed_a_replica_set():
    s = settings_from_env({"MONGODB_URI": "mongodb://db1:27017", "MONGO_REPLICA_SET": "rs0"})
    kw = client_kwargs(s)
    assert (s.topology, kw["replicaSet"], kw["serverSelectionTimeoutMS"]) == ("replica_set", "rs0", 15000)


def test_explicit_env_timeout_wins_over_the_failover_default():
    s = settings_from_env({"MONGODB_URI": "mongodb+srv://c.example.net/",
                           "MONGO_SERVER_SELECTION_TIMEOUT_MS": "30000"})
    assert client_kwargs(s)["serverSelectionTimeoutMS"] == 30000


def test_options_in_the_uri_win_over_defaults_but_not_over_env_variables():
    uri = ("mongodb+srv://c.example.net/shop?readPreference=secondaryPreferred&retryWrites=false"
           "&serverSelectionTimeoutMS=9000&maxPoolSize=3&appName=atlas-app&compressors=zstd")
    kw = client_kwargs(settings_from_env({"MONGODB_URI": uri}))
    for option in ("readPreference", "retryWrites", "serverSelectionTimeoutMS", "maxPoolSize",
                   "appname", "compressors", "zlibCompressionLevel"):
        assert option not in kw, option       # pymongo would let a keyword override the URI
    assert kw["retryReads"] is True           # not in the URI: our default stays
    kw = client_kwargs(settings_from_env({"MONGODB_URI": uri, "MONGO_MAX_POOL_SIZE": "8",
                                          "MONGO_READ_PREFERENCE": "nearest"}))
    assert kw["maxPoolSize"] == 8 and kw["readPreference"] == "nearest"   # the daemon's pool wins


def test_uri_options_really_reach_pymongo():
    import pymongo
    s = settings_from_env({"MONGODB_URI": "mongodb://127.0.0.1:1,127.0.0.1:2/x?replicaSet=rs0"
                                          "&readPreference=secondary&maxStalenessSeconds=120",
                           "MONGO_WRITE_CONCERN": "majority", "MONGO_HEARTBEAT_FREQUENCY_MS": "2000"})
    client = pymongo.MongoClient(s.uri, **dict(client_kwargs(s), connect=False))
    try:
        assert client.read_preference.mongos_mode == "secondary"
        assert client.read_preference.max_staleness == 120
        assert client.write_concern.document == {"w": "majority"}
        assert client.options.retry_writes is True and client.options.replica_set_name == "rs0"
        assert client.options.server_selection_timeout == FAILOVER_SERVER_SELECTION_TIMEOUT_MS / 1000
        assert client.topology_description.topology_type_name == "ReplicaSetNoPrimary"
    finally:
        client.close()


@pytest.mark.parametrize("env, message", [
    ({"MONGODB_URI": "mongodb+srv://a.example.net:27017/"},
     "mongodb+srv:// takes one host name without a port"),
    ({"MONGODB_URI": "mongodb+srv://a.example.net,b.example.net/"}, "takes one host name"),
    ({"MONGODB_URI": "mongodb+srv://a.example.net/?directConnection=true"}, "directConnection=true cannot"),
    ({"MONGODB_URI": "mongodb://a,b/?directConnection=true"}, "directConnection=true needs exactly one host"),
    ({"MONGODB_URI": "mongodb://a,,b/"}, "MONGODB_URI: no host"),
    ({"MONGODB_URI": "mongodb://a/?replicaSet=rs0", "MONGO_REPLICA_SET": "rs1"},
     "contradicts replicaSet=rs0"),
    ({"MONGO_WRITE_CONCERN": "all"}, "MONGO_WRITE_CONCERN: must be majority or a number"),
    ({"MONGO_WRITE_CONCERN": "51"}, "MONGO_WRITE_CONCERN"),
    ({"MONGO_MAX_STALENESS_S": "30"}, "MONGO_MAX_STALENESS_S: must be 90-86400, got 30"),
    ({"MONGO_MAX_STALENESS_S": "120", "MONGO_READ_PREFERENCE": "primary"},
     "only applies to reads from secondaries"),
    ({"MONGODB_URI": "mongodb://a/?readPreference=primary", "MONGO_MAX_STALENESS_S": "120"},
     "read preference is primary"),
    ({"MONGO_HEARTBEAT_FREQUENCY_MS": "100"}, "MONGO_HEARTBEAT_FREQUENCY_MS: must be 500-600000"),
])
def test_bad_replica_settings_are_refused_by_name(env, message):
    with pytest.raises(MongoSettingsError) as exc:
        settings_from_env(env)
    assert message in str(exc.value)


def test_standalone_defaults_are_unchanged_and_pass_no_replica_options():
    kw = client_kwargs(settings_from_env({"MONGODB_URI": "mongodb://db1/"}))
    assert not {"replicaSet", "w", "maxStalenessSeconds", "heartbeatFrequencyMS"} & set(kw)
    assert kw["serverSelectionTimeoutMS"] == 2000


def test_real_replica_set_takes_majority_retryable_writes_and_reads_through_the_app():
    from app.wsgi import create_app
    from app_wsgi_helpers import call

    uri = needs.mongodb()
    settings = settings_from_env({"MONGODB_URI": uri, "MONGO_WRITE_CONCERN": "majority"})
    if not settings.replicated:
        needs.skip("MONGODB_URI names one server without replicaSet=; this test needs a replica set")
    db_name = f"ultrascale_test_{uuid.uuid4().hex[:8]}"
    settings = settings_from_env({"MONGODB_URI": uri, "MONGODB_DB": db_name,
                                  "MONGO_WRITE_CONCERN": "majority"})
    handle = MongoHandle(settings)
    try:
        client = handle.client()
        db = handle.database()
        db.items.insert_one({"_id": "rs-1", "name": "replicated"})     # w=majority, retryable
        assert client.topology_description.topology_type_name in ("ReplicaSetWithPrimary", "Sharded")
        assert client.options.retry_writes is True
        app = create_app({"MONGODB_URI": uri, "MONGODB_DB": db_name}, mongo_handle=handle)
        status, body = call(app, "/items/rs-1")
        assert status == 200 and body["item"]["name"] == "replicated"
    finally:
        try:
            handle.client().drop_database(db_name)
        finally:
            handle.close()


def test_show_settings_names_the_topology(monkeypatch, capsys):
    import json

    from app import mongo
    monkeypatch.setenv("MONGODB_URI", "mongodb+srv://cluster0.example.net/shop?w=majority")
    assert mongo.main(["show-settings"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["topology"] == "srv" and out["database"] == "shop"
    assert out["kwargs"]["serverSelectionTimeoutMS"] == FAILOVER_SERVER_SELECTION_TIMEOUT_MS
    monkeypatch.setenv("MONGODB_URI", "mongodb+srv://a.example.net:27017/")
    assert mongo.main(["show-settings"]) == 2
    assert "error: MONGODB_URI: mongodb+srv:// takes one host name" in capsys.readouterr().err
