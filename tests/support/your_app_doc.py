"""The code and specs printed in docs/your-app.md, as the tests (tests/yourapp) and the
benchmarks (bench/plan.py) use them: each block is found by its first line, `# <filename>`."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "your-app.md"


def documented_block(language: str, filename: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    [text] = [b for b in blocks if b.startswith(f"# {filename}\n")]
    return text


def documented_python(filename: str) -> str:
    """The ```python block of docs/your-app.md whose first line is `# <filename>`."""
    return documented_block("python", filename)


def documented_spec(filename: str) -> dict:
    """The ```yaml block of docs/your-app.md whose first line is `# <filename>`."""
    return yaml.safe_load(documented_block("yaml", filename))
