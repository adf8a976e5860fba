"""``benchmarks/tunnel_attacks.py --only garbage`` runs end to end against this checkout.

The script starts its own router (a child process on free ports of 127.0.0.1) and prints a row
per garbage shape; this keeps it from rotting between the measurements in benchmarks/README.md.
It does not check the figures against targets (the router's own tests do), only that every shape
got an outcome the script could measure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.support import ROOT

SCRIPT = ROOT / "benchmarks" / "tunnel_attacks.py"


def test_garbage_attack_runs_and_reports_every_shape() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--only", "garbage", "--duration", "1", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script stops its router on SIGTERM
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"tunnel_attacks.py took over 30 s: {err.decode()[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    rows = report["rows"]
    assert [row["attack"] for row in rows] == ["garbage"] * 5, rows
    assert all(not row["outcome"].startswith("error") for row in rows), rows
    by_shape = {row["variant"]: row for row in rows}
    # An HTTP request that is not the upgrade, and a garbage line, are answered at once.
    plain = next(row for shape, row in by_shape.items() if "plain" in shape)
    assert plain["data"]["answer"].startswith("HTTP 4"), plain
    assert plain["data"]["elapsed"] < 2, plain
    line = next(row for shape, row in by_shape.items() if "garbage line" in shape)
    assert line["data"]["answer"] == "HTTP 400", line
    for row in rows:
        assert row["data"]["elapsed"] > 0, row
    # The table goes to stderr with --json, one line per shape.
    assert err.decode().count("| garbage |") == 5, err.decode()
