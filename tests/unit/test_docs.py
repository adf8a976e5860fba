"""Docs that cannot drift: ARCHITECTURE.md names every module, the code's citations of it name
sections that exist, and README.md's status table lists every status the router can send.

These read the repository's own files; nothing here imports the modules they describe.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
README = ROOT / "README.md"
PACKAGES = ("ptth", "router")
CITING = ("ptth", "router", "tests", "examples", "benchmarks")


def modules() -> list[str]:
    """Every module of both packages, as a repository path."""
    return sorted(
        p.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def mentioned(module: str, text: str, unique: set[str]) -> bool:
    """Whether ARCHITECTURE.md names ``module``: its path or its last two path parts; a glob in
    backticks that matches it (`router/proxy_*.py`); its file name in backticks on a line that
    names its directory, or anywhere when no other module shares that name; for a package's
    ``__init__.py``, the package's directory."""
    parts = module.split("/")
    folder = "/".join(parts[:-1]) + "/"
    if module.endswith("/__init__.py"):
        return folder in text
    if module in text or "/".join(parts[-2:]) in text:
        return True
    globs = [t for t in re.findall(r"`([^`\s]*/[^`\s]*\*[^`\s]*\.py)`", text)]
    if any(fnmatch.fnmatch(module, g) for g in globs):
        return True
    ticked = f"`{parts[-1]}`"
    if parts[-1] in unique and ticked in text:
        return True
    return any(ticked in line and folder in line for line in text.splitlines())


def test_every_module_is_in_architecture() -> None:
    text = ARCHITECTURE.read_text()
    names = [m.rsplit("/", 1)[-1] for m in modules()]
    unique = {n for n in names if names.count(n) == 1}
    missing = [m for m in modules() if not mentioned(m, text, unique)]
    assert not missing, f"modules ARCHITECTURE.md does not name: {missing}"


def headings(path: Path) -> set[str]:
    return {
        line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")
    }


CITATION = re.compile(r'ARCHITECTURE\.md,?[\s#]*\(?"([^"]+)"')
ATTACK = re.compile(r"ARCHITECTURE\.md,\s*attacks?\s+(\d+)(?:\s+and\s+(\d+))?")


def citations() -> list[tuple[str, str]]:
    """(file, section) for every ``ARCHITECTURE.md, "Section"`` in the code and tests; a section
    name may run over a comment's line break."""
    found = []
    for root in CITING:
        for path in (ROOT / root).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            text = path.read_text()
            for match in CITATION.finditer(text):
                section = re.sub(r"\s*\n\s*#?\s*", " ", match.group(1)).strip()
                found.append((path.relative_to(ROOT).as_posix(), section))
    return found


def test_citations_name_existing_sections() -> None:
    cited = citations()
    assert len(cited) > 20, "the citation pattern no longer matches the code's comments"
    known = headings(ARCHITECTURE)
    broken = [(f, s) for f, s in cited if s not in known]
    assert not broken, f"citations of ARCHITECTURE.md sections that do not exist: {broken}"


def test_cited_attacks_are_rows_of_the_attack_table() -> None:
    rows = set(re.findall(r"^\| (\d+) \|", ARCHITECTURE.read_text(), re.MULTILINE))
    cited: set[str] = set()
    for root in CITING:
        for path in (ROOT / root).rglob("*.py"):
            for match in ATTACK.finditer(path.read_text()):
                cited.update(g for g in match.groups() if g)
    assert cited, "no 'ARCHITECTURE.md, attack N' citation found"
    assert cited <= rows, f"attacks cited but not in 'Attacks and faults': {cited - rows}"


README_CITATION = re.compile(r'ARCHITECTURE\.md(?:,\s*|\s*\()((?:"[^"]+"(?:,\s*|\s+and\s+)?)+)')


def test_readme_cites_existing_architecture_sections() -> None:
    known = headings(ARCHITECTURE)
    cited = {
        name
        for match in README_CITATION.finditer(README.read_text())
        for name in re.findall(r'"([^"]+)"', match.group(1))
    }
    assert cited, "README.md cites no ARCHITECTURE.md section"
    broken = sorted(re.sub(r"\s+", " ", n) for n in cited if re.sub(r"\s+", " ", n) not in known)
    assert not broken, f"README.md cites ARCHITECTURE.md sections that do not exist: {broken}"
