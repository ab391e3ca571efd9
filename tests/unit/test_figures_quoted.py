"""Every measured figure in the README and docs/ is quoted from docs/benchmarks.md, the one
place a figure lives, and no doc points at a file outside the repository.

A *quote* is the README's "Measured" section, and every paragraph, list item or table row
elsewhere that names benchmarks.md: each figure in it (a number with a unit of time, memory,
rate or a percentage, or a count with thousands separators) must appear in docs/benchmarks.md.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "docs" / "benchmarks.md"
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p != BENCH)]

FIGURE = re.compile(r"(?<![\w.,/-])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
                    r"(?:\s?(ms|s|MiB|GiB|%|req/s|x|×)(?![\w/])|(?<=\d,\d\d\d)(?![\d.]))")


def figures(text: str) -> set[str]:
    """The figures in `text`, leaving out inline code (commands and their arguments)."""
    out = set()
    for m in FIGURE.finditer(re.sub(r"`[^`\n]*`", "", text)):
        number, unit = m.group(1), m.group(2)
        if unit is None and "," not in number:
            continue
        out.add(f"{number} {unit}" if unit else number)
    return out


def blocks(text: str) -> list[str]:
    """Paragraphs, list items and table rows (a table row is its own block)."""
    out, cur = [], []
    for line in text.splitlines():
        starts_item = re.match(r"\s*([-*]|\d+\.)\s", line) or line.lstrip().startswith("|")
        if not line.strip() or starts_item or line.startswith("#"):
            if cur:
                out.append("\n".join(cur))
            cur = [] if not line.strip() else [line]
        else:
            cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


def quotes(path: Path) -> list[str]:
    text = path.read_text()
    out = [b for b in blocks(text) if "benchmarks.md" in b or "benchmarks](" in b]
    if path.name == "README.md":
        measured = text.split("\n## Measured", 1)[1].split("\n## ", 1)[0]
        out.append(measured)
    return out


def in_benchmarks(figure: str, bench_text: str) -> bool:
    """The figure as benchmarks.md writes it; thousands separators aside, and a whole number
    may quote a figure given with decimals there (5,196 req/s for 5196.3 req/s), and a table
    cell there may leave its unit to the column's heading."""
    number, _, unit = figure.partition(" ")
    number = number.replace(",", "")
    decimals = r"(\.\d+)?" if "." not in number else ""
    pattern = (r"(?<![\d.])" + re.escape(number) + decimals + r"(?![\d])"
               + (r"\s?" + re.escape(unit) if unit else ""))
    text = re.sub(r"(?<=\d),(?=\d{3})", "", bench_text)
    cell = r"\|\s*" + re.escape(number) + decimals + r"\s*\|"
    return re.search(pattern, text) is not None or re.search(cell, text) is not None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_quoted_figures_are_in_benchmarks(doc):
    bench_text = BENCH.read_text()
    missing = sorted({f"{f!r} in: {q.strip()[:100]!r}" for q in quotes(doc)
                      for f in figures(q) if not in_benchmarks(f, bench_text)})
    assert not missing, (f"{doc.name} quotes figures that docs/benchmarks.md does not have "
                         f"(measure them there, with the command, or quote what it has):\n"
                         + "\n".join(missing))


def test_readme_measured_section_is_a_quote():
    # The rule above needs the section; a renamed heading would silently exempt the figures.
    assert "\n## Measured" in (ROOT / "README.md").read_text()


MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/home/\w|/tmp/[\w.-]+\.(json|txt|csv|log)\b)")


@pytest.mark.parametrize("doc", [*DOCS, BENCH], ids=lambda p: p.name)
def test_no_machine_paths(doc):
    hits = [f"{doc.name}:{n}: {line.strip()}" for n, line in enumerate(doc.read_text().splitlines(), 1)
            if MACHINE_PATH.search(line)]
    assert not hits, "a doc points at one machine's files:\n" + "\n".join(hits)


def test_figure_pattern():
    assert figures("0.33 s, 47.4 MiB and 1.53 %; 42,095 of 56,476; 5,196 req/s; 1.06x") == {
        "0.33 s", "47.4 MiB", "1.53 %", "42,095", "56,476", "5,196 req/s", "1.06 x"}
    assert figures("port 8080, 2 instances, v1.2, 10-20 s, `-d 8 s --series 100,500`") == set()
    assert in_benchmarks("1.06 x", "| 1.06x |") and in_benchmarks("0.25 %", "+0.25 % CPU")
    assert in_benchmarks("0.33 s", "| 0.33 s |") and not in_benchmarks("0.3 s", "| 0.33 s |")
    assert not in_benchmarks("3.0 MiB", "13.0 MiB") and not in_benchmarks("3 MiB", "3.0 s")
    assert in_benchmarks("5,196 req/s", "| 5196.3 req/s |") and in_benchmarks("42,095", "42095 of")


def test_typical_rss_is_the_measured_one():
    """The planner's expected memory without a calibration is ultrascaled's row of section 4."""
    from ultrascaled.spec.budget import TYPICAL_INSTANCE_RSS_MIB
    section = BENCH.read_text().split("### 4. Supervisor footprint", 1)[1].split("\n### ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| (d) ultrascaled"))
    instances = int(re.search(r"idle with (\d+) instances", "### 4. Supervisor footprint" + section).group(1))
    total = float(re.search(r"\|\s*([\d.]+) MiB\s*\|[^|]*\|\s*$", row).group(1))
    assert abs(TYPICAL_INSTANCE_RSS_MIB - total / instances) < 0.5, (row, "set it in spec/budget.py")
