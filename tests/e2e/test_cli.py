"""The command lines: ``python -m router`` and ``python -m ptth`` as real child processes.

Every child comes from ``tests.support.spawn`` (always killed and reaped); its merged output is
read by a thread so the pipe never fills, and assertions wait on lines with a deadline.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from router.config import RouterConfig, load_config
from tests.support import spawn

APP = "tests.e2e.apps_drain:app"


class Output:
    """Collects a child's output lines in a background thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                with self._changed:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._changed.notify_all()
        except ValueError:  # the pipe was closed by spawn's clean-up
            pass

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The first line matching ``pattern``; fails with the whole output after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.text}")

    def finish(self, timeout: float = 5.0) -> str:
        """All output, once the child exited and the pipe is drained."""
        self._thread.join(timeout)
        return self.text


@dataclasses.dataclass
class RunningRouterProcess:
    proc: subprocess.Popen[bytes]
    output: Output
    http_url: str
    tunnel: str


@contextmanager
def router_process(
    *flags: str, env: dict[str, str] | None = None
) -> Iterator[RunningRouterProcess]:
    """``python -m router`` on ephemeral ports; yields once it logged where it listens."""
    with spawn(
        "-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", *flags, env=env
    ) as proc:
        output = Output(proc)
        match = output.wait_for(
            r"front end on (http://[\d.]+:\d+), tunnel port on ([\d.]+:\d+)", timeout=15
        )
        yield RunningRouterProcess(proc, output, match.group(1), match.group(2))


@contextmanager
def backend_process(
    router: str, name: str, *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    with spawn(
        "-m",
        "ptth",
        APP,
        "--router",
        router,
        *flags,
        env={"PTTH_TEST_BACKEND": name, **(env or {})},
    ) as proc:
        yield proc, Output(proc)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.args!r} still running after {timeout} s") from None


def run_to_end(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    with spawn(*args, env=env) as proc:
        out, _ = proc.communicate(timeout=20)
        return proc.returncode, out.decode("utf-8", "replace")


# -- 5. --help -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_router_help_lists_every_flag() -> None:
    code, out = run_to_end("-m", "router", "--help")
    assert code == 0, out
    expected = ["--config", "--http", "--tunnel", "--token", "--response-timeout"]
    expected += ["--default-service", "--drain-timeout", "--queue-timeout", "--max-body"]
    expected += ["--" + f.name.replace("_", "-") for f in dataclasses.fields(RouterConfig)]
    for flag in expected:
        assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", out), f"{flag} missing:\n{out}"
    for f in dataclasses.fields(RouterConfig):
        # Each flag names its environment variable (argparse may wrap the line before it).
        env = "PTTH_" + f.name.upper()
        assert env in out.replace("\n", " ").replace("  ", " "), f"{env} missing:\n{out}"


@pytest.mark.timeout(60)
def test_ptth_help_lists_every_flag() -> None:
    code, out = run_to_end("-m", "ptth", "--help")
    assert code == 0, out
    flags = ["--router", "--service", "--host", "--path-prefix", "--token", "--connections"]
    flags += ["--max-streams", "--weight", "--instance", "--drain-timeout", "--log-level"]
    flags += ["--strip-prefix", "--root-path"]
    for flag in flags:
        assert re.search(rf"(^|\s|\[){re.escape(flag)}\b", out), f"{flag} missing:\n{out}"
    assert "MODULE:ATTRIBUTE" in out
    assert "PTTH_TOKEN" in out


# -- 6. router + backend + request + signals -----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_router_and_backend_processes_serve_log_and_stop(sig: signal.Signals) -> None:
    with ExitStack() as stack:
        router = stack.enter_context(router_process())
        _backend, backend_out = stack.enter_context(backend_process(router.tunnel, "cli-b"))
        registered = router.output.wait_for(
            r"router\.tunnel: tunnel (\w+): registered service=default .*instance=(\S+)",
            timeout=15,
        )
        tunnel_id = registered.group(1)
        backend_out.wait_for(rf"tunnel {tunnel_id}: registered with {re.escape(router.tunnel)}")

        response = httpx.get(router.http_url + "/hello/cli?x=1", timeout=10)
        assert response.status_code == 200
        assert response.headers["x-backend"] == "cli-b"
        assert response.text == "hello from cli-b"
        host = router.http_url.removeprefix("http://")

        # Access log: client, method, host, path, status, bytes, duration, tunnel id.
        access = router.output.wait_for(
            r"router\.access: (\S+) GET (\S+) (/hello/cli\?x=1) (\d{3}) (\d+) ([\d.]+)ms "
            r"tunnel=(\w+)"
        )
        assert access.group(1) == "127.0.0.1"
        assert access.group(2) == host
        assert access.group(4) == "200"
        assert int(access.group(5)) == len(response.content)
        assert float(access.group(6)) >= 0
        assert access.group(7) == tunnel_id

        started = time.monotonic()
        router.proc.send_signal(sig)
        code = wait_exit(router.proc, timeout=8)
        elapsed = time.monotonic() - started
        out = router.output.finish()
        assert code == 0, out
        assert elapsed < 5, f"router took {elapsed:.1f} s to stop\n{out}"
        assert "shutting down" in out
        assert "router stopped" in out
        assert "Traceback" not in out, out


@pytest.mark.timeout(60)
def test_router_with_no_traffic_stops_on_sigterm() -> None:
    with router_process() as router:
        router.proc.send_signal(signal.SIGTERM)
        code = wait_exit(router.proc, timeout=8)
        out = router.output.finish()
        assert code == 0, out
        assert "router stopped" in out


@pytest.mark.timeout(60)
def test_backend_process_exits_zero_on_sigterm() -> None:
    with router_process() as router, backend_process(router.tunnel, "b") as (backend, out):
        router.output.wait_for(r"tunnel \w+: registered", timeout=15)
        started = time.monotonic()
        backend.send_signal(signal.SIGTERM)
        code = wait_exit(backend, timeout=8)
        elapsed = time.monotonic() - started
        text = out.finish()
        assert code == 0, text
        assert elapsed < 4, f"backend took {elapsed:.1f} s to stop\n{text}"
        assert "Traceback" not in text, text
        router.output.wait_for(r"tunnel \w+: lost", timeout=5)


# -- 7. configuration precedence -----------------------------------------------------------


@pytest.mark.timeout(10)
def test_config_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "router.toml"
    config_file.write_text('response_timeout = 7\ndefault_service = "x"\n')
    argv = ["--config", str(config_file)]

    assert load_config([], {}) == RouterConfig()
    from_file = load_config(argv, {})
    assert (from_file.response_timeout, from_file.default_service) == (7.0, "x")

    env = {"PTTH_RESPONSE_TIMEOUT": "8"}
    from_env = load_config(argv, env)
    assert (from_env.response_timeout, from_env.default_service) == (8.0, "x")

    from_flag = load_config([*argv, "--response-timeout", "9"], env)
    assert (from_flag.response_timeout, from_flag.default_service) == (9.0, "x")

    # Each layer only overrides what it sets; untouched settings keep their defaults.
    assert from_flag.drain_timeout == RouterConfig().drain_timeout
    # A flag alone beats the environment too, without a file.
    assert load_config(["--response-timeout", "9"], env).response_timeout == 9.0


@pytest.mark.timeout(10)
def test_config_file_router_table_dashes_and_env_for_default_service(tmp_path: Path) -> None:
    config_file = tmp_path / "router.toml"
    config_file.write_text('[router]\nresponse-timeout = 7\ndefault-service = "x"\n')
    argv = ["--config", str(config_file)]
    config = load_config(argv, {})
    assert (config.response_timeout, config.default_service) == (7.0, "x")
    assert load_config(argv, {"PTTH_DEFAULT_SERVICE": "y"}).default_service == "y"
    assert load_config(argv, {"PTTH_DEFAULT_SERVICE": "none"}).default_service is None
    flagged = load_config([*argv, "--default-service", "z"], {"PTTH_DEFAULT_SERVICE": "y"})
    assert flagged.default_service == "z"


@pytest.mark.timeout(10)
def test_config_errors_are_config_errors(tmp_path: Path) -> None:
    from ptth.errors import ConfigError

    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_config(["--config", str(bad_key)], {})
    with pytest.raises(ConfigError, match="response_timeout"):
        load_config([], {"PTTH_RESPONSE_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(["--config", str(tmp_path / "missing.toml")], {})


@pytest.mark.timeout(60)
def test_router_cli_reports_a_bad_config_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    code, out = run_to_end("-m", "router", "--config", str(bad))
    assert code == 2, out
    assert "no_such_setting" in out
    assert "Traceback" not in out


@pytest.mark.timeout(60)
def test_router_cli_port_in_use_is_one_line_and_exit_2() -> None:
    """A person reads one line naming the problem, never an ExceptionGroup traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = run_to_end(
            "-m", "router", "--http", f"127.0.0.1:{port}", "--tunnel", "127.0.0.1:0"
        )
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert "cannot listen" in lines[0] and "in use" in lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--max-connections", "lots"], "max_connections"),
        (["--h2c-upgrade", "maybe"], "h2c_upgrade"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"], "/nonexistent.pem"),
        (["--tls-cert", "/nonexistent.pem"], "tls_key"),
    ],
)
def test_router_cli_malformed_front_end_flags_exit_2(args: list[str], names: str) -> None:
    code, out = run_to_end(
        "-m", "router", "--http", "127.0.0.1:0", "--tunnel", "127.0.0.1:0", *args
    )
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and names in lines[0], out
    assert "Traceback" not in out


# -- 8. PTTH_TOKEN -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ptth_token_env_for_router_and_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTTH_TOKEN", raising=False)
    with ExitStack() as stack:
        router = stack.enter_context(router_process(env={"PTTH_TOKEN": "s3cret"}))
        good, _ = stack.enter_context(
            backend_process(router.tunnel, "tok", env={"PTTH_TOKEN": "s3cret"})
        )
        router.output.wait_for(r"tunnel \w+: registered", timeout=15)
        response = httpx.get(router.http_url + "/t", timeout=10)
        assert response.status_code == 200
        assert response.headers["x-backend"] == "tok"
        assert good.poll() is None

        with backend_process(router.tunnel, "bad", env={"PTTH_TOKEN": "wrong"}) as (
            bad,
            bad_out,
        ):
            code = wait_exit(bad, timeout=15)
            text = bad_out.finish()
            assert code != 0, text
            assert "401" in text, text
            assert "Traceback" not in text, text
        router.output.wait_for(r"refused .*401", timeout=5)

        # No token at all is refused the same way.
        with backend_process(router.tunnel, "none") as (anon, out):
            code = wait_exit(anon, timeout=15)
            text = out.finish()
            assert code != 0, text
            assert "401" in text, text

        # An empty PTTH_TOKEN cannot be sent as a bearer token: a clear error at start-up.
        with backend_process(router.tunnel, "empty", env={"PTTH_TOKEN": ""}) as (empty, out):
            code = wait_exit(empty, timeout=15)
            text = out.finish()
            assert code == 2, text
            assert "bearer token" in text, text
            assert "Traceback" not in text, text

        # The good backend was never disturbed.
        assert good.poll() is None
        assert httpx.get(router.http_url + "/t", timeout=10).status_code == 200


@pytest.mark.timeout(60)
def test_token_flag_overrides_env_for_backend() -> None:
    with ExitStack() as stack:
        router = stack.enter_context(
            router_process("--token", "flag-token", env={"PTTH_TOKEN": "env-token"})
        )
        stack.enter_context(
            backend_process(
                router.tunnel, "flag", "--token", "flag-token", env={"PTTH_TOKEN": "env-token"}
            )
        )
        router.output.wait_for(r"tunnel \w+: registered", timeout=15)
        response = httpx.get(router.http_url + "/t", timeout=10)
        assert response.headers["x-backend"] == "flag"


# -- 9. bad app spec -----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonexistent:app", "cannot import 'nonexistent'"),
        ("tests.e2e.apps_drain:no_such_app", "has no attribute 'no_such_app'"),
        ("tests.e2e.apps_drain:__all__", "is not callable"),
        (":app", "MODULE:ATTRIBUTE"),
    ],
)
def test_ptth_bad_app_exits_2_with_clear_message(spec: str, message: str) -> None:
    code, out = run_to_end("-m", "ptth", spec, "--router", "127.0.0.1:9")
    assert code == 2, out
    assert message in out, out
    assert out.startswith("ptth: "), out
    assert "Traceback" not in out, out
