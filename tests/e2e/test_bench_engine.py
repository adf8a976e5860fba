"""``benchmarks/run.py engine --quick`` runs end to end and prints its table (no timing checks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
NUMBER = r"([\d,]+(?:\.\d+)?)"


@pytest.mark.timeout(150)
def test_engine_mode_prints_both_sides_with_nonzero_numbers(tmp_path: Path) -> None:
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
    header = re.search(r"^figure\s+unit\s+A: h2 pair\s+B: trio\s+B/A\s+B: asyncio\s+B/A", out, re.M)
    assert header is not None, out
    for figure in FIGURES:
        row = re.search(rf"^{re.escape(figure)}\s+\S+\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out, re.M)
        assert row is not None, f"no row {figure!r} in:\n{out}"
        pair, ptth_trio, ratio = (float(v.replace(",", "")) for v in row.groups())
        assert pair > 0 and ptth_trio > 0 and ratio > 0, row[0]
    data = json.loads(out_json.read_text())
    for impl in ("pair", "trio", "asyncio"):
        assert all(value > 0 for value in data["median"][impl].values()), data["median"]
