"""ultrascale reference WSGI app and reusable parts.

Each module is usable alone and does no I/O at import time:

* :mod:`app.cache`       two-tier (memory LRU + Redis) cache with a circuit breaker
* :mod:`app.mongo`       MongoDB client settings from env, one lazy client per worker
* :mod:`app.monitoring`  WSGI metrics middleware (prometheus_client, multiprocess aware)
* :mod:`app.wsgi`        the reference app (``app.wsgi:application``)
* ``app/gunicorn_conf.py`` gunicorn config file (gevent workers, hooks)
"""
