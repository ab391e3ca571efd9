"""scripts/redis-failover's measurements run and clean up (the quick table only)."""
from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from support import needs  # noqa: E402


def test_arguments_out_of_bounds_are_refused_by_name(capsys):
    from bench.redis_failover import main
    with pytest.raises(SystemExit) as exc:
        main(["--threads", "0"])
    assert exc.value.code == 2
    assert "--threads 1-16" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_connections_table_counts_one_workers_redis_connections_and_leaves_nothing(tmp_path):
    needs.redis_tools()
    from bench.redis_failover import connections
    rows = connections(tmp_path, concurrency=(1, 8))
    assert [c for c, _, _ in rows] == [1, 8]
    assert rows[-1][2] == 3               # 80 fresh keys: connections to all three primaries
    assert 1 <= rows[0][1] <= rows[1][1]  # the pool keeps what the first burst opened
    mine = [p for p in psutil.process_iter(["name", "cwd"])
            if p.info["name"] == "redis-server" and str(tmp_path) in (p.info["cwd"] or "")]
    assert mine == []                                      # every node it started is gone
