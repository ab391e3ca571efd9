"""Event followers (issue 12, items 3 and 4): a capped number of them, and one that falls
behind is told what it lost (events.gap) and goes on, instead of hanging silently."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time

from api_helpers import FakeFleet
from ultrascaled.surface.api.keys import FOLLOWERS
from ultrascaled.observe.events import EventLog
from support.harness import BIN
from support.waiting import wait_for


def read_sse(api, n_events: int, since: int = 0, emit=None) -> list[dict]:
    """Follow the stream, call emit() once it is open, return the first n_events data records."""
    async def go():
        async with api.client.get(f"/events?follow=1&since={since}") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            got: list[dict] = []
            if emit:
                await asyncio.sleep(0.05)
                emit()
            async for line in r.content:
                if line.startswith(b"data: "):
                    got.append(json.loads(line[6:]))
                    if len(got) == n_events:
                        return got
    return api.run(asyncio.wait_for(go(), 20))


def test_a_follower_gets_events_in_order(api, fleet):
    fleet.events.emit("a")
    got = read_sse(api, 3, emit=lambda: [fleet.events.emit("b"), fleet.events.emit("c")])
    assert [e["event"] for e in got] == ["a", "b", "c"] and [e["seq"] for e in got] == [1, 2, 3]


def test_a_follower_whose_queue_overflows_catches_up_from_the_ring(api, fleet):
    def burst():  # 1500 events with no chance for the follower to read: its queue holds 1000
        for i in range(1500):
            fleet.events.emit("burst", i=i)
    got = read_sse(api, 1500, emit=burst)
    assert [e["i"] for e in got] == list(range(1500))
    assert not any(e["event"] == "events.gap" for e in got)


def test_events_lost_from_the_ring_are_reported_as_a_gap(make_api, tmp_path):
    fleet = FakeFleet(tmp_path)
    fleet.events = EventLog(size=100, logger=fleet.events.log)
    api = make_api(fleet=fleet)

    def burst():
        for i in range(1500):
            fleet.events.emit("burst", i=i)
        fleet.events.emit("after")
    got = read_sse(api, 101, emit=burst)
    gap = got[0]
    assert gap["event"] == "events.gap" and gap["missed"] == 1401 and (gap["after"], gap["next"]) == (0, 1402)
    assert [e["seq"] for e in got[1:]] == list(range(1402, 1502)) and got[-1]["event"] == "after"


def test_since_past_what_the_ring_holds_starts_with_a_gap(make_api, tmp_path):
    fleet = FakeFleet(tmp_path)
    fleet.events = EventLog(size=10, logger=fleet.events.log)
    for i in range(50):
        fleet.events.emit("old", i=i)
    api = make_api(fleet=fleet)
    got = read_sse(api, 2, since=5)
    assert got[0]["event"] == "events.gap" and got[0]["missed"] == 35 and got[1]["seq"] == 41
    assert read_sse(api, 1, since=0)[0]["seq"] == 41  # since=0: what there is, no gap


def test_followers_beyond_the_cap_get_503(make_api, fleet):
    api = make_api(max_followers=2)

    async def go():
        streams = [await api.client.get("/events?follow=1") for _ in range(2)]
        third = await api.client.get("/events?follow=1")
        body = await third.json()
        polled = await api.client.get("/events")
        for s in streams:
            s.close()
        await asyncio.sleep(0.1)
        again = await api.client.get("/events?follow=1")
        status = again.status
        again.close()
        return third.status, body, polled.status, status
    status, body, polled, again = api.run(go())
    assert (status, body["error"]["code"]) == (503, "too_many_requests")
    assert "2 event followers" in body["error"]["message"]
    assert polled == 200 and again == 200


def test_a_follower_that_reads_nothing_is_dropped_and_frees_its_slot(make_live, fleet):
    live = make_live(write_timeout=0.2)
    followers = live.server.runner.app[FOLLOWERS]
    s = socket.create_connection(("127.0.0.1", live.settings.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET /events?follow=1 HTTP/1.1\r\nHost: 127.0.0.1:{live.settings.port}\r\n\r\n".encode())
    try:
        wait_for(lambda: followers.active == 1, what="follower connected")
        big = "x" * 65536
        for _ in range(20):  # ~10 MB the client never reads: the server's writes block, then time out
            live.call(lambda: [fleet.events.emit("big", blob=big) for _ in range(8)])
            if followers.active == 0:
                break
            time.sleep(0.05)
        wait_for(lambda: followers.active == 0, what="stuck follower dropped")
    finally:
        s.close()


def test_a_closed_follower_frees_its_slot_at_once(make_live, fleet):
    """Not at its next write (a keep-alive every 15 s): 40 followers opened and closed leave
    room for 40 new ones right after, with no event in between."""
    live = make_live(max_followers=40)
    followers = live.server.runner.app[FOLLOWERS]
    request = f"GET /events?follow=1 HTTP/1.1\r\nHost: 127.0.0.1:{live.settings.port}\r\n\r\n".encode()
    for _ in range(2):
        socks = [socket.create_connection(("127.0.0.1", live.settings.port)) for _ in range(40)]
        for s in socks:
            s.sendall(request)
        wait_for(lambda: followers.active == 40, what="40 followers connected")
        for s in socks:
            s.close()
        wait_for(lambda: followers.active == 0, timeout=10, what="closed followers noticed before any write")


def test_ctl_events_follow_shows_the_gap_and_goes_on(make_live, tmp_path):
    fleet = FakeFleet(tmp_path)
    fleet.events = EventLog(size=20, logger=fleet.events.log)
    live = make_live(fleet=fleet)
    proc = subprocess.Popen([str(BIN / "ultrascalectl"), "--api", live.url, "events", "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        followers = live.server.runner.app[FOLLOWERS]
        wait_for(lambda: followers.active == 1, what="ultrascalectl following")

        def burst():
            for i in range(1500):
                fleet.events.emit("burst", i=i)
            fleet.events.emit("marker")
        live.call(burst)
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("marker" in x for x in lines):
            lines.append(proc.stdout.readline())
        gap = [x for x in lines if "events.gap" in x]
        assert gap and "WARN" in gap[0] and "missed=" in gap[0], lines[:3]
        assert "marker" in lines[-1]
        live.call(lambda: fleet.events.emit("still.going"))
        assert "still.going" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
