"""The README's layout section matches the tree: every folder and module of ultrascaled/ is
named there, and nothing it names is gone."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Layout"):text.index("\n## ", text.index("## Layout") + 3)]


def test_every_module_of_the_package_is_in_the_readme_layout():
    section = layout_section()
    missing = []
    for path in sorted((ROOT / "ultrascaled").rglob("*.py")):
        rel = path.relative_to(ROOT / "ultrascaled")
        if rel.name == "__main__.py" or (rel.name == "__init__.py" and len(rel.parts) == 1):
            continue
        name = rel.parent.name + "/" if rel.name == "__init__.py" else rel.stem
        if not re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", section):
            missing.append(str(rel))
    assert not missing, f"README's layout leaves out {missing}"


def test_the_readme_layout_names_no_module_that_is_gone():
    section = layout_section()
    block = section[section.index("ultrascaled/"):section.index("app/ ")]
    names = set(re.findall(r"\b([a-z_]+)(?:\.py)?\b", block))
    existing = {p.stem for p in (ROOT / "ultrascaled").rglob("*.py")} | \
               {p.name for p in (ROOT / "ultrascaled").rglob("*") if p.is_dir()}
    claimed = {n for n in re.findall(r"\b([a-z_]+)\.py\b", block)}
    assert claimed <= existing, claimed - existing
    assert names  # the block was found
