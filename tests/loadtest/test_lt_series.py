"""Series mode on tiny steps, fleet memory from a fake daemon API, the chart and its fallback
without matplotlib. The steps think 5 ms between requests: the table's contents are checked,
not the throughput."""
import json
import sys

import pytest

from loadtest.cli import main
from loadtest.series import fleet_memory_bytes, have_matplotlib, markdown_table
from support import needs


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| users")]


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_series_markdown_table_with_fleet_memory(server, capsys):
    rc = main([f"{server.base}/ok", "--series", "1,3", "-d", "0.3", "--think", "5", "-q", "--procs", "1",
               "--fleet-api", server.base, "--max-error-rate", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| users | req/s | p50 ms | p95 ms | p99 ms | error rate | client CPU (cores)" in out
    rows = table_rows(out)
    assert [r.split("|")[1].strip() for r in rows] == ["1", "3"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert float(cells[1]) > 0            # req/s
        assert cells[5] == "0.00%"            # error rate
        assert cells[8] == "100 MiB"          # fleet RSS from GET /fleet
        assert cells[9] == "PASS"


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_series_fleet_api_unreachable_prints_na(server, free_port, capsys):
    rc = main([f"{server.base}/ok", "--series", "2", "-d", "0.3", "--think", "5", "-q", "--procs", "1",
               "--fleet-api", f"http://127.0.0.1:{free_port}", "--json", "-"])
    captured = capsys.readouterr()
    assert rc == 0
    # with --json - the JSON owns stdout and the table goes to stderr
    assert table_rows(captured.err)[0].strip("|").split("|")[8].strip() == "n/a"
    data = json.loads(captured.out)
    assert data["steps"][0]["users"] == 2 and data["steps"][0]["fleet_rss_bytes"] is None
    assert data["steps"][0]["result"]["failed"] == 0


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_series_step_missing_target_exits_1(server, capsys):
    rc = main([f"{server.base}/500", "--series", "1", "-d", "0.3", "--think", "5", "-q", "--procs", "1",
               "--max-error-rate", "1"])
    assert rc == 1
    assert "FAIL" in table_rows(capsys.readouterr().out)[0]


def test_fleet_memory_absent_field_is_none(server):
    assert fleet_memory_bytes(server.base) == 100 * 1024 * 1024
    assert fleet_memory_bytes(f"{server.base}/fleet-empty") is None


def test_markdown_table_formats_missing_values():
    row = {"users": 5, "rps": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
           "error_rate_pct": None, "client_cpu_cores": 0.0, "host_cpu_pct": None,
           "fleet_rss_bytes": None, "verdict": "-"}
    line = markdown_table([row]).splitlines()[2]
    assert line == "| 5 | 0.0 | n/a | n/a | n/a | n/a | 0.00 | n/a | n/a | - |"


def test_chart_without_matplotlib_exits_2_with_hint(server, capsys, monkeypatch):
    # matplotlib is in the test extra: hide it (a None in sys.modules makes `import` raise
    # ImportError), as on an install without it
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not have_matplotlib()
    with pytest.raises(SystemExit) as exc:
        main([f"{server.base}/ok", "--series", "1", "-d", "0.5", "-q", "--chart", "/tmp/x.png"])
    assert exc.value.code == 2
    assert "pip install matplotlib" in capsys.readouterr().err
    assert server.requests == 0  # refused before sending any load


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_chart_written(server, tmp_path, capsys):
    needs.matplotlib()
    png = tmp_path / "series.png"
    assert main([f"{server.base}/ok", "--series", "1,2", "-d", "0.3", "-q", "--chart", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
