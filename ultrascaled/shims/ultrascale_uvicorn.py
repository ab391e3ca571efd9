"""uvicorn's gunicorn workers, except that an orphaned worker finishes what it is answering and
exits, within `--graceful-timeout`, instead of serving on.

The daemon puts this folder on the instances' PYTHONPATH and passes
`--worker-class ultrascale_uvicorn.UvicornWorker` for `gunicorn.worker_class:
uvicorn_worker.UvicornWorker` (and the matching class for uvicorn's H11 worker and for the
deprecated `uvicorn.workers` ones). uvicorn's worker never compares its parent pid: after a
kill -9 of its master it keeps serving until the daemon kills what is left of the group
(graceful_timeout + 2 s later, measured in tests/yourapp/test_your_app.py). This one checks
its parent every second (uvicorn's own tick calls it) and, once the parent changed, shuts down
as on SIGTERM: it stops accepting, lets the requests in flight finish, cancels what is still
running a second before `--graceful-timeout`, runs the lifespan shutdown and exits. That bound
holds on SIGTERM from the master too (uvicorn's own default is none, so gunicorn's SIGKILL at
`--graceful-timeout` would cut a long request and the app's lifespan shutdown with it).
Only gunicorn and uvicorn are imported here: the app's interpreter need not have ultrascaled
installed. Each class's base is imported on first use, so naming the uvicorn-worker ones never
imports uvicorn's deprecated module, and the other way round.
"""
import os
import sys

PARENT_CHECK_SECONDS = 1.0


class _FinishWhenOrphaned:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.timeout_notify = min(self.timeout, PARENT_CHECK_SECONDS)
        self.config.timeout_graceful_shutdown = max(self.cfg.graceful_timeout - 1.0, 0.5)
        self._server = None

    async def _serve(self):
        # uvicorn-worker's _serve, keeping the server so that a parent change can stop it
        from gunicorn.arbiter import Arbiter
        from uvicorn.server import Server

        self.config.app = self.wsgi
        self._server = server = Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def callback_notify(self):
        self.notify()   # the heartbeat
        if self.alive and self.ppid != os.getppid():
            self.log.info("Parent changed: finishing the requests in flight, then exiting: %s", self)
            self.alive = False
            if self._server is not None:
                self._server.should_exit = True   # uvicorn's graceful path, as on SIGTERM


def _make(name, module, base_name):
    import importlib

    base = getattr(importlib.import_module(module), base_name)
    cls = type(name, (_FinishWhenOrphaned, base), {"__module__": __name__, "__doc__": base.__doc__})
    globals()[name] = cls
    return cls


_CLASSES = {"UvicornWorker": ("uvicorn_worker", "UvicornWorker"),
            "UvicornH11Worker": ("uvicorn_worker", "UvicornH11Worker"),
            "LegacyUvicornWorker": ("uvicorn.workers", "UvicornWorker"),
            "LegacyUvicornH11Worker": ("uvicorn.workers", "UvicornH11Worker")}


def __getattr__(name):   # gunicorn loads `ultrascale_uvicorn.NAME` with getattr (PEP 562)
    if name in _CLASSES:
        return _make(name, *_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
