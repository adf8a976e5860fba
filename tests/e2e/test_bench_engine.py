"""``benchmarks/run.py engine --quick`` runs end to end and prints its table (no timing checks).

With a checkout of the old driver beside this one (``../wt-before``, see benchmarks/README.md)
the default run includes ``before`` and its after/before column too; CI has none.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import ROOT

FIGURES = (
    "req/s, 1 stream",
    "req/s, 10 streams",
    "req/s, 100 streams",
    "round trip p50, 1 stream",
    "round trip p99, 1 stream",
    "bulk, 1 stream",
)
FIGURE_KEYS = ("rps1", "rps10", "rps100", "rtt_p50", "rtt_p99", "bulk")  # in the JSON
NUMBER = r"[\d,]+(?:\.\d+)?"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def engine_module() -> ModuleType:
    # engine.py imports its sibling benchmarks/machine.py as the script it is.
    if "machine" not in sys.modules:
        _load("machine", ROOT / "benchmarks/machine.py")
    return _load("bench_engine", ROOT / "benchmarks/engine.py")


def numbers(row: str) -> list[float]:
    """The figures of a table row: after its title and unit, before the target text."""
    values = re.split(r"\s{2,}", row.strip(), maxsplit=2)[2]
    values = re.split(r"[<>]=", values)[0]
    return [float(v.replace(",", "")) for v in re.findall(rf"(?<![\w.]){NUMBER}", values)]


@pytest.mark.timeout(150)
def test_engine_mode_prints_both_sides_with_nonzero_numbers(tmp_path: Path) -> None:
    engine = engine_module()
    with_before = engine.before_tree(None) is not None
    out_json = tmp_path / "engine.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "engine", "--quick", "--json", str(out_json)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    before = r"before\s+B/A\s+" if with_before else ""
    header = rf"^figure\s+unit\s+A: h2 pair\s+{before}B: trio\s+B/A\s+B: asyncio\s+B/A"
    assert re.search(header, out, re.M) is not None, out
    # pair, then value and B/A per implementation, then trio/bef if before ran
    uvloop = importlib.util.find_spec("uvloop") is not None
    columns = 1 + 2 * (2 + uvloop + with_before) + with_before
    for figure in FIGURES:
        row = re.search(rf"^{re.escape(figure)}\s.*$", out, re.M)
        assert row is not None, f"no row {figure!r} in:\n{out}"
        values = numbers(row[0])
        assert len(values) == columns and all(v > 0 for v in values), row[0]
    data = json.loads(out_json.read_text())
    impls = ["pair", "trio", "asyncio"] + ["before"] * with_before
    for impl in impls:
        assert all(value > 0 for value in data["median"][impl].values()), data["median"]
    assert data["ptth_files"]["trio"] == str(ROOT / "ptth" / "__init__.py")
    if with_before:
        before_file = Path(data["ptth_files"]["before"])
        assert not before_file.is_relative_to(ROOT), before_file
        ratios = data["after_over_before"]
        assert set(ratios["median"]) == set(FIGURE_KEYS), ratios
        assert all(v > 0 for v in [*ratios["median"].values(), *ratios["cpu_per_unit"].values()])


def test_before_refuses_this_checkout(tmp_path: Path) -> None:
    """``before`` must import the old tree's ptth, never this one's."""
    engine = engine_module()
    with pytest.raises(ValueError, match="not a checkout of the old driver"):
        engine.before_tree(ROOT)  # this tree has no ptth/_tunnel.py
    fake = tmp_path / "old"
    (fake / "ptth").mkdir(parents=True)
    (fake / "ptth" / "_tunnel.py").write_text("")
    impl = engine.Impl("before", "before", tree=engine.before_tree(fake))
    with pytest.raises(RuntimeError, match="not from the before tree"):
        engine.check_ptth_file(impl, "client", str(ROOT / "ptth" / "__init__.py"))
    engine.check_ptth_file(impl, "client", str(fake / "ptth" / "__init__.py"))  # accepted
    args = ["engine", "--backends", "before,trio", "--before-tree", str(ROOT)]
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not a checkout of the old driver" in result.stderr, result
