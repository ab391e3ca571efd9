"""`ultrascalectl traffic`: the figures of GET /traffic as a table, against a scripted API.
No daemon; milliseconds."""
from __future__ import annotations

import json

from ultrascaled.surface import cli


class Api:
    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def request(self, method, path, body=None):
        self.calls.append((method, path))
        return self.answer


def w(requests, errors, p95):
    return {"requests": requests, "errors_5xx": errors, "rate_5xx": errors / requests if requests else 0.0,
            "p95": p95}


ON = {"enabled": True, "seconds": 30, "fleet": w(2810, 1412, 0.011),
      "instances": [{"port": 8001, **w(1412, 1412, 0.003)}, {"port": 8002, **w(1398, 0, 0.012)},
                    {"port": 8003, **w(0, 0, None)}]}


def run(api, argv, capsys):
    args = cli.parse_args(argv)
    code = args.func(api, args)
    return code, capsys.readouterr().out


def test_traffic_table_per_instance_and_fleet(capsys):
    api = Api(ON)
    code, out = run(api, ["traffic", "--seconds", "30"], capsys)
    assert code == 0 and api.calls == [("GET", "/traffic?seconds=30")]
    lines = out.splitlines()
    assert lines[0] == "last 30 s, measured at nginx"
    assert lines[2].split() == ["8001", "1412", "47.1", "1412", "100.0%", "3"]
    assert lines[4].split() == ["8003", "0", "0.0", "0", "0.0%", "-"]
    assert lines[5].split()[0] == "fleet" and lines[5].split()[3] == "1412"


def test_traffic_json_and_off(capsys):
    assert run(Api(ON), ["traffic", "--json"], capsys) == (0, json.dumps(ON, indent=2) + "\n")
    off = {"enabled": False, "seconds": 60, "fleet": None, "instances": []}
    code, out = run(Api(off), ["traffic"], capsys)
    assert code == cli.EXIT_FAILED and "traffic_log is off" in out
