"""The worker shims the instances run (ultrascaled/shims, on their PYTHONPATH): the uvicorn one
is uvicorn's class underneath, and a worker whose parent changed shuts down as on SIGTERM.
No process; milliseconds (the kill -9 itself: tests/yourapp/test_your_app.py)."""
import asyncio
import importlib
import os
import sys
import types

import pytest

from ultrascaled.core.command import SHIMS, WORKER_CLASSES


@pytest.fixture
def shim():
    sys.path.insert(0, SHIMS)
    try:
        yield importlib.import_module("ultrascale_uvicorn")
    finally:
        sys.path.remove(SHIMS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # uvicorn.workers, deprecated
@pytest.mark.parametrize("spec_class", [c for c in WORKER_CLASSES if "uvicorn" in c])
def test_each_uvicorn_class_of_the_spec_runs_a_subclass_of_itself(shim, spec_class):
    module, _, name = spec_class.rpartition(".")
    base = getattr(importlib.import_module(module), name)
    shim_module, _, shim_name = WORKER_CLASSES[spec_class].rpartition(".")
    assert shim_module == "ultrascale_uvicorn"
    cls = getattr(shim, shim_name)
    assert issubclass(cls, base) and cls.CONFIG_KWARGS == base.CONFIG_KWARGS
    assert cls.__module__ == "ultrascale_uvicorn"   # gunicorn logs it by this name


def test_an_unknown_name_is_an_attribute_error(shim):
    with pytest.raises(AttributeError):
        shim.NoSuchWorker


def orphan(shim, ppid_changed: bool):
    w = object.__new__(shim.UvicornWorker)
    w.alive, w.ppid = True, os.getppid() + (1 if ppid_changed else 0)
    w._server = types.SimpleNamespace(should_exit=False)
    w.notified = 0
    w.notify = lambda: setattr(w, "notified", w.notified + 1)
    w.log = types.SimpleNamespace(info=lambda *a: None)
    return w


@pytest.mark.parametrize("ppid_changed", [False, True])
def test_a_parent_change_stops_the_server_as_sigterm_does(shim, ppid_changed):
    w = orphan(shim, ppid_changed)
    asyncio.run(w.callback_notify())
    assert w.notified == 1   # the heartbeat goes on either way
    assert (w.alive, w._server.should_exit) == ((False, True) if ppid_changed else (True, False))
