"""Makes `tests/support` importable as the package `support` (`from support.harness import
Daemon`) in every test folder. pytest's default `prepend` import mode already puts this
folder on sys.path because this conftest.py sits in it; the line below keeps that true under
`--import-mode=importlib` too."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
