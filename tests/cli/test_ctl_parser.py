"""ultrascalectl's command line as tables: what parses to what, what is a usage error (exit 2),
what each --help shows. No daemon; milliseconds."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ultrascaled.surface import cli

API = "http://127.0.0.1:9000"


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("ULTRASCALE_API", "ULTRASCALE_TOKEN_FILE", "ULTRASCALE_CA_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv,expected", [
    (["status"], {"cmd": "status", "json": False, "api": API, "token_file": None, "ca_file": None}),
    (["status", "--json"], {"json": True}),
    (["status", "--js"], {"json": True}),
    (["--api", "http://h:1", "status"], {"api": "http://h:1"}),
    (["--api=https://h:1", "--ca-file", "ca.pem", "status"], {"api": "https://h:1", "ca_file": "ca.pem"}),
    (["--ap", "http://h:2", "--tok", "t", "status"], {"api": "http://h:2", "token_file": "t"}),
    (["scale", "3"], {"cmd": "scale", "instances": 3, "no_wait": False, "timeout": 120.0}),
    (["scale", "3", "--no-wait", "--timeout", "5"], {"no_wait": True, "timeout": 5.0}),
    (["scale", "worker=3", "web=4"], {"instances": 4, "targets": [("worker", 3), ("web", 4)]}),
    (["scale", "worker=0"], {"instances": None, "targets": [("worker", 0)]}),
    (["scale", "--no", "--time=2.5", "4"], {"instances": 4, "no_wait": True, "timeout": 2.5}),
    (["restart", "8001"], {"cmd": "restart", "port": 8001, "all": False, "no_wait": False, "timeout": 300.0}),
    (["restart", "--all"], {"port": None, "all": True}),
    (["restart", "--a", "--timeout", "9"], {"all": True, "timeout": 9.0}),
    (["reload"], {"cmd": "reload", "wait": False, "timeout": 300.0}),
    (["reload", "--wait", "--timeout", "60"], {"wait": True, "timeout": 60.0}),
    (["alerts", "--json"], {"cmd": "alerts", "json": True}),
    (["logs", "8001"], {"cmd": "logs", "port": 8001, "lines": 50, "follow": False}),
    (["logs", "8001", "-n5"], {"lines": 5}),
    (["logs", "-fn", "7", "8001"], {"lines": 7, "follow": True}),
    (["logs", "8001", "--lines=0", "--follow"], {"lines": 0, "follow": True}),
    (["events"], {"cmd": "events", "follow": False, "lines": 50, "since": 0}),
    (["events", "-f", "-n", "2"], {"follow": True, "lines": 2}),
    (["events", "-n0", "--since", "17"], {"lines": 0, "since": 17}),
    (["plan", "--users", "1000"], {"cmd": "plan", "users": 1000}),
])
def test_parses(argv, expected):
    args = cli.parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_the_environment_gives_the_global_defaults(monkeypatch):
    monkeypatch.setenv("ULTRASCALE_API", "http://env:1")
    monkeypatch.setenv("ULTRASCALE_TOKEN_FILE", "/etc/token")
    monkeypatch.setenv("ULTRASCALE_CA_FILE", "/etc/ca.pem")
    args = cli.parse_args(["status"])
    assert (args.api, args.token_file, args.ca_file) == ("http://env:1", "/etc/token", "/etc/ca.pem")
    assert cli.parse_args(["--api", "http://flag:2", "status"]).api == "http://flag:2"


@pytest.mark.parametrize("argv,says", [
    ([], "COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["restart", "--all=no"], "--all: ignored explicit argument 'no'"),
    (["scale", "3", "--no-wait=false"], "--no-wait: ignored explicit argument 'false'"),
    (["restart"], "one of the arguments PORT|TYPE --all is required"),
    (["restart", "a.b"], "must be a port or a process type name"),
    (["restart", "8001", "--all"], "not allowed with"),
    (["scale"], "the following arguments are required: INSTANCES"),
    (["scale", "three"], "INSTANCES: must be a whole number, got 'three'"),
    (["scale", "-1"], "INSTANCES: must not be negative, got -1"),
    (["scale", "3", "--timeout", "soon"], "--timeout: must be a number of seconds, got 'soon'"),
    (["scale", "3", "--timeout", "-5"], "--timeout: must not be negative"),
    (["scale", "3", "--timeout", "nan"], "--timeout: must be a number of seconds"),
    (["scale", "3", "4"], "INSTANCES: web given twice (a bare N is web)"),
    (["scale", "worker=1", "worker=2"], "INSTANCES: worker given twice"),
    (["scale", "4", "web=2"], "INSTANCES: web given twice"),
    (["scale", "worker=x"], "INSTANCES: worker: must be a whole number, got 'x'"),
    (["scale", "a.b=2"], "INSTANCES: a process type name is letters, digits, - and _, got 'a.b'"),
    (["status", "--timeout", "5"], "unrecognized arguments: --timeout"),
    (["events", "-n", "x"], "-n/--lines: must be a whole number"),
    (["events", "--since"], "expected one argument"),
    (["logs"], "PORT"),
    (["--api"], "expected one argument"),
    (["--token-file", "t"], "COMMAND"),
    (["status", "--api", "http://h:1"], "unrecognized arguments: --api"),
])
def test_usage_errors_exit_2_and_say_why(argv, says, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and "usage: ultrascalectl" in err, err


@pytest.mark.parametrize("cmd,options", [
    ("status", ["--json"]),
    ("scale", ["INSTANCES", "--timeout", "--no-wait"]),
    ("restart", ["PORT", "--all", "--timeout", "--no-wait"]),
    ("reload", ["--wait", "--timeout"]),
    ("alerts", ["--json"]),
    ("logs", ["PORT", "-n", "--lines", "-f", "--follow"]),
    ("events", ["-n", "--lines", "-f", "--follow", "--since"]),
    ("plan", ["--users", "--spec", "--calibration"]),
    ("traffic", ["--seconds", "--json"]),
])
def test_each_command_has_its_own_help(cmd, options, capsys):
    assert cli.main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ultrascalectl {cmd}"), out
    for opt in options:
        assert opt in out, (opt, out)
    assert "--api" not in out  # the global options are the global help's


def test_the_global_help_lists_every_command_the_options_and_exit_codes(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ["status", "scale", "restart", "reload", "alerts", "logs", "events", "plan", "traffic",
                 "--api", "ULTRASCALE_API", "--token-file", "ULTRASCALE_TOKEN_FILE",
                 "--ca-file", "ULTRASCALE_CA_FILE", "exit codes", "3 daemon unreachable", "docs/cli.md"]:
        assert word in out, word


def test_a_missing_token_file_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["--token-file", str(tmp_path / "none"), "status"]) == cli.EXIT_USAGE
    assert "No such file" in capsys.readouterr().err


def test_a_malformed_api_address_is_a_usage_error(capsys):
    assert cli.main(["--api", "127.0.0.1:9000", "status"]) == cli.EXIT_USAGE
    assert "--api must look like" in capsys.readouterr().err


def test_nothing_answering_is_exit_3(capsys):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a port nothing listens on
    assert cli.main(["--api", f"http://127.0.0.1:{port}", "status"]) == cli.EXIT_UNREACHABLE
    assert "cannot reach ultrascaled" in capsys.readouterr().err


def test_status_builds_only_its_own_parser_and_never_imports_the_planner():
    code = ("import sys; from ultrascaled.surface import cli; a = cli.parse_args(['status']); "
            "print(a.cmd, 'ultrascaled.core.capacity' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["status", "False"]


@pytest.mark.parametrize("cmd", list(cli.COMMANDS))
def test_docs_cli_md_describes_every_command_and_option(cmd, capsys):
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert f"\n### {cmd}\n" in doc
    section = doc.split(f"\n### {cmd}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    assert cli.main([cmd, "--help"]) == 0
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", capsys.readouterr().out)) - {"-h", "--help"}
    missing = sorted(o for o in options if f"`{o}" not in section)
    assert (options or cmd in NESTED) and not missing, missing


NESTED = {"autoscale": ("status", "pause", "resume")}   # commands whose options are per action


def _commands_from_the_parser() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand of `ultrascalectl` as its argparse parser builds it (each built on demand,
    as `ultrascalectl COMMAND --help` would), read from the parser itself, not from a list here."""
    grabbed = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        grabbed.setdefault("top", self)
        raise SystemExit(0)
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            cli.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = real
    [sub] = [a for a in grabbed["top"]._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = {}
    for name in sub.choices:
        help, build = sub._builders[name]
        p = argparse.ArgumentParser(prog=f"ultrascalectl {name}")
        build(p)
        parsers[name] = p
    return parsers


def test_every_command_of_the_parser_is_in_the_readme_and_in_docs_cli_md_with_its_arguments():
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    doc = (root / "docs" / "cli.md").read_text()
    commands = _commands_from_the_parser()
    assert {"status", "deploy", "rollback", "releases"} <= set(commands)
    listed = readme.split("`ultrascalectl` commands:", 1)[1].split("\n\n", 1)[0]
    missing_readme = sorted(c for c in commands if f"`{c}" not in listed)
    assert not missing_readme, f"the README's command list leaves out {missing_readme}"
    problems = []
    for name, p in commands.items():
        if f"\n### {name}\n" not in doc:
            problems.append(f"no section `### {name}`")
            continue
        section = doc.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if isinstance(a, argparse._SubParsersAction):
                names = list(a.choices)          # autoscale's actions
            elif a.option_strings:
                names = [max(a.option_strings, key=len)]
            else:
                names = [a.metavar or a.dest.upper()]
            problems += [f"{name}: {n}" for n in names if n not in section]
    assert not problems, f"docs/cli.md is missing: {problems}"


def test_status_names_the_worker_class_the_spec_runs():
    fleet = {"fleet": "shop", "ready": 2, "desired": 2, "ports": [8001, 8002],
             "memory": {"total_rss_bytes": 100 << 20, "budget_bytes": 8 << 30},
             "gunicorn": {"worker_class": "uvicorn_worker.UvicornWorker", "workers": 2,
                          "requests_per_worker": 1000},
             "instances": []}
    head = cli.render_status(fleet).splitlines()[0]
    assert head.endswith("; 2 x uvicorn_worker.UvicornWorker per instance (1000 requests at once each)")
    del fleet["gunicorn"]   # an older daemon's /fleet
    assert "per instance" not in cli.render_status(fleet)
