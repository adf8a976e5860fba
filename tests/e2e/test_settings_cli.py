"""Both programs' command lines: --print-config, and a bad value is one line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python ARGS`` to its end (killed in any case), with no PTTH_* from outside."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PTTH_")}
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("program", ["router", "ptth"])
def test_print_config_prints_toml_masks_the_token_and_loads_back(
    program: str, tmp_path: Path
) -> None:
    code, out, err = run(
        "-m",
        program,
        "--print-config",
        "--token",
        "s3cret",
        env={"PTTH_LOG_LEVEL": "DEBUG"},
    )
    assert code == 0, err
    assert "s3cret" not in out
    assert 'token = "***"' in out
    assert 'log_level = "DEBUG"' in out  # the environment is part of the effective config
    saved = tmp_path / f"{program}.toml"
    saved.write_text(out)
    code, again, err = run("-m", program, "--config", str(saved), "--print-config")
    assert code == 0, err
    assert again == out


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("program", "args", "env", "expected"),
    [
        (
            "router",
            [],
            {"PTTH_MAX_CONNECTIONS": "abc"},
            "router: max_connections = 'abc' (from PTTH_MAX_CONNECTIONS): expected an integer",
        ),
        (
            "ptth",
            ["m:app", "--max-streams", "lots"],
            {},
            "ptth: max_streams = 'lots' (from --max-streams): expected an integer",
        ),
        (
            "ptth",
            ["m:app"],
            {"PTTH_DRAIN_TIMEOUT": "-1"},
            "ptth: drain_timeout = '-1' (from PTTH_DRAIN_TIMEOUT): expected a number >= 0",
        ),
    ],
)
def test_a_bad_value_is_one_line_and_exit_code_2(
    program: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    code, out, err = run("-m", program, *args, env=env)
    assert code == 2, (out, err)
    assert err.strip() == expected
    assert "Traceback" not in err


@pytest.mark.timeout(60)
def test_ptth_reads_its_config_file(tmp_path: Path) -> None:
    config = tmp_path / "ptth.toml"
    config.write_text('[ptth]\nto = "ftp://nowhere"\n')
    code, _, err = run("-m", "ptth", "--config", str(config))
    assert code == 2
    assert "ftp://nowhere" in err and "Traceback" not in err
