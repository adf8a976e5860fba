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


# Where the router's own statuses are written: every call of a response helper with a literal
# status, and every literal assigned to a ``status``. ptth/errors.py holds the ProxyError and
# HandshakeError classes; the handshake and httpsock modules answer on the router's ports.
STATUS_SOURCES = ("ptth/errors.py", "ptth/proto/handshake.py", "ptth/httpsock/_server.py")
STATUS_CALL = re.compile(
    r"\b(?:HandshakeRefused|HeadError|_Refused|Reply|_refuse|refuse|_constant_refusal|_answer"
    r"|_error_bytes|_text|Response|PutAnswer|GetAnswer|InformationalResponse|h11\.Response)"
    r"\(\s*(?:[a-z_]+,\s*)?(?:status_code=)?([1-5]\d\d)\b"
)
STATUS_SET = re.compile(r"\b(?:status(?:_code)?\s*(?::\s*int\s*)?=\s*|status or )([1-5]\d\d)\b")


def without_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def emitted_statuses() -> dict[int, str]:
    """Each status the router's code can send (or log, 499), with one place that does."""
    paths = sorted((ROOT / "router").rglob("*.py")) + [ROOT / p for p in STATUS_SOURCES]
    paths.append(ROOT / "ptth/httpsock/protocol.py")
    found: dict[int, str] = {}
    for path in paths:
        text = without_comments(path.read_text())
        for match in (*STATUS_CALL.finditer(text), *STATUS_SET.finditer(text)):
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            found.setdefault(int(match.group(1)), where)
    # The HTTP/1.1 front end answers h11's parse errors with the status h11 suggests.
    http1 = (ROOT / "router/frontend/http1.py").read_text()
    if "error_status_hint" in http1:
        import h11

        for source in Path(h11.__file__).parent.glob("*.py"):
            for hint in re.findall(r"error_status_hint=(\d{3})", source.read_text()):
                found.setdefault(int(hint), f"h11 ({source.name}), via router/frontend/http1.py")
    return found


def readme_statuses() -> set[int]:
    """The first column of the table under README.md's "Status codes" heading."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Status codes"))
    found = set()
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        found.update(int(s) for s in re.findall(r"^\| (\d{3})\b", line))
    return found


def test_the_scan_finds_the_statuses_it_must() -> None:
    emitted = emitted_statuses()
    # One of each way a status is written: a ProxyError class, a handshake refusal, a front-end
    # head error, h11's hint, the access log's 499, an admin reply.
    assert {504, 409, 505, 501, 499, 500} <= set(emitted), emitted


def test_every_status_the_router_sends_is_in_the_readme() -> None:
    emitted = emitted_statuses()
    documented = readme_statuses()
    missing = {s: emitted[s] for s in sorted(set(emitted) - documented)}
    assert not missing, f"statuses the router sends that README.md's table lacks: {missing}"
    stale = documented - set(emitted)
    assert not stale, f"README.md's status table lists statuses no code sends: {sorted(stale)}"


def test_architecture_cites_existing_readme_sections() -> None:
    known = headings(README)
    text = ARCHITECTURE.read_text()
    cited = {re.sub(r"\s+", " ", m) for m in re.findall(r'README(?:\.md)?,?\s*\(?"([^"]+)"', text)}
    assert cited, "ARCHITECTURE.md cites no README section"
    broken = sorted(c for c in cited if c not in known)
    assert not broken, f"ARCHITECTURE.md cites README.md sections that do not exist: {broken}"
