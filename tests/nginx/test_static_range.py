"""NginxUpstream with `upstream_servers: range`: what it asks nginx to list."""
from __future__ import annotations

import asyncio

from ultrascaled.observe.events import EventLog
from ultrascaled.effects.nginx_control import ApplyResult
from ultrascaled.spec import parse_spec
from ultrascaled.effects.upstream import NginxUpstream


class RecordingController:
    def __init__(self):
        self.asked: list[list[int]] = []

    async def apply(self, servers):
        self.asked.append([p for _, p in servers])
        return ApplyResult(ok=True, code="unchanged", servers=tuple(servers))


def upstream(text: str) -> tuple[NginxUpstream, RecordingController]:
    up = NginxUpstream(parse_spec(text), EventLog())
    up.ctl = RecordingController()
    return up, up.ctl


def test_range_lists_every_port_while_any_is_ready_and_none_when_none_is():
    up, ctl = upstream("instances: {count: 2, max: 4, base_port: 9001}\n")
    assert up.gated
    for servers in ([("127.0.0.1", 9002)], [], [("127.0.0.1", 9001), ("127.0.0.1", 9002)]):
        asyncio.run(up.apply(servers))
    assert ctl.asked == [[9001, 9002, 9003, 9004], [], [9001, 9002, 9003, 9004]]
    up.excluded = frozenset({9003})       # another program holds it (the reconciler's range check)
    asyncio.run(up.apply([("127.0.0.1", 9001)]))
    assert ctl.asked[-1] == [9001, 9002, 9004]


def test_ready_lists_only_the_ready_instances():
    up, ctl = upstream("instances: {count: 2, max: 4}\nnginx: {upstream_servers: ready}\n")
    asyncio.run(up.apply([("127.0.0.1", 8002)]))
    assert not up.gated and ctl.asked == [[8002]]
