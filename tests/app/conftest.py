# Fixtures live in app_helpers.py (a uniquely named module, so test dirs do not collide).
from app_helpers import _clean_app_env, gunicorn_factory, redis_server  # noqa: F401
