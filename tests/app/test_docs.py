"""docs/app.md documents every environment variable the app tier reads."""
from __future__ import annotations

import ast
import re

from app_helpers import REPO

ENV_NAME = re.compile(r"^(PORT|LOG_LEVEL|REDIS_URL|WEB_CONCURRENCY|FORWARDED_ALLOW_IPS|"
                      r"(ULTRASCALE|CACHE|MONGO|MONGODB|GUNICORN|SOCKETIO|PROMETHEUS)_[A-Z0-9_]+)$")


def env_names_in_source() -> set[str]:
    names = set()
    for path in (REPO / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.match(node.value):
                names.add(node.value)
    return names


def test_every_env_variable_read_by_app_is_in_the_docs_table():
    names = env_names_in_source()
    assert {"MONGODB_URI", "PORT", "REDIS_URL", "LOG_LEVEL", "CACHE_TTL", "MONGO_MAX_POOL_SIZE"} <= names
    doc = (REPO / "docs" / "app.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", doc, re.M)) | set(re.findall(r"/ `([A-Z0-9_]+)`", doc))
    missing = sorted(names - documented)
    assert not missing, f"undocumented env variables: {missing}"
