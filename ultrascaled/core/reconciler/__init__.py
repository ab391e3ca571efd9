"""The reconciler: the one writer of the fleet's records (loop.py), in parts that read as one class:
records and messages, the nginx side, the memory watchdog, replacement and adoption."""
from ultrascaled.core.reconciler.loop import Reconciler, excerpt
from ultrascaled.core.reconciler.records import Instance, Successor

__all__ = ["Reconciler", "Instance", "Successor", "excerpt"]
