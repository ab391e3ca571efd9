"""ultrascale reference WSGI app and reusable parts.

Each module is usable alone and does no I/O at import time:

* :mod:`app.cache`       two-tier (memory LRU + Redis) cache with a circuit breaker
* :mod:`app.mongo`       MongoDB client settings from env, one lazy client per worker
* :mod:`app.monitoring`  WSGI metrics middleware (prometheus_client, multiprocess aware)
* :mod:`app.wsgi`        the reference app (``app.wsgi:application``)
* ``app/gunicorn_conf.py`` gunicorn config file (gevent workers, hooks)

The package has two names. In a checkout it is this folder, ``app`` (the default spec's
``app.module: app.wsgi:application`` with ``app.directory`` at the checkout's root). Installed
from the wheel (``pip install 'ultrascale[app]'``) it is ``ultrascale_app``
(``ultrascale_app.wsgi:application``), so that it cannot collide with a user's own ``app``.
Every import between its modules is therefore relative (``from . import mongo``); the examples
in the modules use the checkout's name.
"""
