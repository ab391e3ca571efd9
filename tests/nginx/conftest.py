"""Fixtures for the nginx tests (helpers live in nginx_helpers.py)."""
from nginx_helpers import backends, fake_runner, nginx_prefix  # noqa: F401
