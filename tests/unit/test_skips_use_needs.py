"""Every skip goes through tests/support/needs.py, which names what is missing and how to get it,
and fails under scripts/test when it is something scripts/setup test installs: no test file
calls pytest.skip, pytest.importorskip or a skip/skipif marker itself."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
NEEDS = TESTS / "support" / "needs.py"
SKIPPING = {"skip", "skipif", "importorskip"}


def dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def direct_skips(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module in ("pytest", "_pytest.outcomes"):
            found += [f"{where}: from {node.module} import {a.name}" for a in node.names if a.name in SKIPPING]
        elif isinstance(node, ast.Call) and dotted(node.func) in ("pytest.skip", "pytest.importorskip"):
            found.append(f"{where}: {dotted(node.func)}(...)")
        elif isinstance(node, ast.Attribute) and dotted(node) in ("pytest.mark.skip", "pytest.mark.skipif"):
            found.append(f"{where}: {dotted(node)}")
        elif isinstance(node, ast.Attribute) and node.attr == "skipTest":
            found.append(f"{where}: .skipTest")
    return found


def test_no_test_file_skips_by_itself():
    files = sorted(p for p in TESTS.rglob("*.py") if p != NEEDS and "__pycache__" not in p.parts)
    assert len(files) > 100, "the scan found the test files"
    offenders = [hit for p in files for hit in direct_skips(p.read_text(), str(p.relative_to(TESTS.parent)))]
    assert offenders == [], ("skip through tests/support/needs.py (needs.tool(), needs.module(), "
                             "needs.skip() ...), not directly:\n" + "\n".join(offenders))


def test_the_scan_sees_each_way_of_skipping():
    source = ("import pytest\nfrom pytest import importorskip\n\n\n"
              "@pytest.mark.skipif(True, reason='x')\ndef test_a():\n    pytest.skip('x')\n\n\n"
              "pytestmark = pytest.mark.skip\n\n\ndef test_b():\n    pytest.importorskip('os')\n"
              "    self.skipTest('x')\n"
              "    assert pytest.skip.Exception  # naming the exception is no skip\n")
    hits = sorted(h.split(": ", 1)[1] for h in direct_skips(source, "probe.py"))
    assert hits == sorted(["from pytest import importorskip", "pytest.mark.skipif", "pytest.mark.skip",
                           "pytest.skip(...)", "pytest.importorskip(...)", ".skipTest"])
