"""gunicorn's gevent worker, except that an orphaned worker finishes what it is answering.

The daemon puts this folder on the instances' PYTHONPATH and passes
`--worker-class ultrascale_gevent.GeventWorker` for `gunicorn.worker_class: gevent`. gunicorn's
own gevent worker calls sys.exit(0) the moment it sees its master gone (notify() compares the
parent pid), which cuts every response in flight; this one stops accepting and lets run()'s
graceful path finish them within `--graceful-timeout` instead, as gunicorn's sync and gthread
workers do (measured in tests/deploy/test_socket_handoff.py: kill -9 of a master under load).
Only gunicorn is imported here: the app's interpreter need not have ultrascaled installed.
"""
import os

from gunicorn.workers import ggevent
from gunicorn.workers.base import Worker


class GeventWorker(ggevent.GeventWorker):
    def notify(self):
        Worker.notify(self)   # the heartbeat only
        if self.alive and self.ppid != os.getppid():
            self.log.info("Parent changed: finishing the requests in flight, then exiting: %s", self)
            self.alive = False   # run() leaves its loop, closes its servers, waits for its pool
