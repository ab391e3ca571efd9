"""ultrascale's load tester: a closed-loop HTTP/1.1 keep-alive load generator for loopback
targets, with a blocking API (:func:`run`) and a background one (:class:`BackgroundLoad`).

See docs/loadtest.md. Command line: ``ultrascale-loadtest URL [options]`` (``python -m loadtest``
in a checkout). Its own package: the daemon never imports it, and every import inside is
relative, so it works under the name it is installed as (``ultrascale_loadtest`` in the wheel).
"""
from .httpclient import LoopbackError, parse_target
from .runner import BackgroundLoad, Config, ConfigError, Result, run
from .stats import ERROR_KINDS, Check, LatencyStats, Targets, evaluate, percentile

__all__ = ["BackgroundLoad", "Config", "ConfigError", "Result", "run", "LoopbackError",
           "parse_target", "ERROR_KINDS", "Check", "LatencyStats", "Targets", "evaluate",
           "percentile", "main"]


def main(argv=None) -> int:
    from .cli import main as _main
    return _main(argv)
