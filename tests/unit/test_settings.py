"""One configuration model for both programs (ptth/settings.py): precedence, errors that name
the key, the value, its source and the expectation, --print-config, the example files and the
README's generated tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

import ptth
from ptth import settings
from ptth._backend import resolve_arguments
from ptth.cli_config import PTTH, PtthConfig, load_ptth
from ptth.errors import ConfigError
from router.config import ROUTER, RouterConfig, load_config, load_router

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


# -- precedence -----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_ptth_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[ptth]\nservice = "from-file"\nweight = 3\nrouter = ["a:1", "b:2"]\n')
    argv = ["--config", path]
    assert load_ptth([], {}) == (PtthConfig(), False)
    from_file, _ = load_ptth(argv, {})
    assert (from_file.service, from_file.weight, from_file.router) == (
        "from-file",
        3.0,
        ("a:1", "b:2"),
    )
    env = {"PTTH_SERVICE": "from-env", "PTTH_ROUTER": "c:3,d:4"}
    from_env, _ = load_ptth(argv, env)
    assert (from_env.service, from_env.weight, from_env.router) == ("from-env", 3.0, ("c:3", "d:4"))
    from_flags, _ = load_ptth([*argv, "--service", "from-flag", "--router", "e:5"], env)
    assert (from_flags.service, from_flags.router) == ("from-flag", ("e:5",))
    assert from_flags.drain_timeout == PtthConfig().drain_timeout  # untouched: the default


@pytest.mark.timeout(10)
def test_router_precedence_for_each_kind_of_value(tmp_path: Path) -> None:
    path = write(
        tmp_path, "max_connections = 7\naccess_log = false\ntrusted_proxies = ['10.0.0.1']\n"
    )
    argv = ["--config", path]
    config = load_config(argv, {})
    assert (config.max_connections, config.access_log, config.trusted_proxies) == (
        7,
        False,
        ("10.0.0.1",),
    )
    env = {"PTTH_MAX_CONNECTIONS": "8", "PTTH_ACCESS_LOG": "yes"}
    config = load_config(argv, env)
    assert (config.max_connections, config.access_log) == (8, True)
    config = load_config([*argv, "--max-connections", "9", "--no-access-log"], env)
    assert (config.max_connections, config.access_log) == (9, False)


@pytest.mark.timeout(10)
def test_ptth_flags_keep_their_old_spellings() -> None:
    config, _ = load_ptth(
        [
            "examples.backend:app",
            "--host",
            "a.example",
            "--host",
            "b.example",
            "--strip-prefix",
            "--identity",
            "--max-streams",
            "5",
        ],
        {},
    )
    assert config.app == "examples.backend:app"
    assert config.hosts == ("a.example", "b.example")
    assert (config.strip_prefix, config.identity, config.max_streams) == (True, True, 5)
    # --strip-prefix takes no value, so the app after it stays the app.
    config, _ = load_ptth(["--strip-prefix", "m:app"], {})
    assert (config.strip_prefix, config.app) == (True, "m:app")
    config, _ = load_ptth(["--identity", "/tmp/id", "m:app"], {})
    assert config.identity == "/tmp/id"
    options = load_ptth(["--max-streams", "5", "--instance", "i-1"], {})[0].backend_options()
    assert (options.max_concurrent_streams, options.instance) == (5, "i-1")


@pytest.mark.timeout(10)
def test_the_environment_is_read_when_loading_not_when_building_the_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = settings.build_parser(PTTH)
    monkeypatch.setenv("PTTH_SERVICE", "late")
    assert parser.parse_args([]).service is None
    assert load_ptth([])[0].service == "late"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("spec_name", "argv", "environ", "message"),
    [
        (
            "router",
            [],
            {"PTTH_MAX_CONNECTIONS": "abc"},
            "max_connections = 'abc' (from PTTH_MAX_CONNECTIONS): expected an integer",
        ),
        (
            "router",
            ["--response-timeout", "soon"],
            {},
            "response_timeout = 'soon' (from --response-timeout): expected a number",
        ),
        (
            "router",
            ["--max-connections", "0"],
            {},
            "max_connections = '0' (from --max-connections): expected a positive number",
        ),
        (
            "router",
            ["--log-format", "xml"],
            {},
            "log_format = 'xml' (from --log-format): expected one of human, json",
        ),
        (
            "ptth",
            ["--connections", "many"],
            {},
            "connections = 'many' (from --connections): expected an integer",
        ),
        (
            "ptth",
            [],
            {"PTTH_STRIP_PREFIX": "maybe"},
            "strip_prefix = 'maybe' (from PTTH_STRIP_PREFIX): expected true or false",
        ),
        (
            "ptth",
            ["--loop", "gevent"],
            {},
            "loop = 'gevent' (from --loop): expected one of auto, asyncio, uvloop, trio",
        ),
    ],
)
def test_bad_flag_and_env_values_name_key_value_source_and_expectation(
    spec_name: str, argv: list[str], environ: dict[str, str], message: str
) -> None:
    spec = ROUTER if spec_name == "router" else PTTH
    with pytest.raises(ConfigError) as info:
        settings.load(spec, argv, environ)
    assert str(info.value) == message


@pytest.mark.timeout(10)
def test_bad_toml_values_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'max_connections = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load_config(["--config", path], {})
    assert str(info.value) == f"max_connections = 'lots' (from {path}): expected an integer"
    path = write(tmp_path, "[ptth]\nweight = true\n")
    with pytest.raises(ConfigError) as info:
        load_ptth(["--config", path], {})
    assert str(info.value) == f"weight = True (from {path}): expected a number"
    path = write(tmp_path, "[ptth]\nhosts = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"hosts = \[1, 2\] .*expected a list of strings"):
        load_ptth(["--config", path], {})
    path = write(tmp_path, "[ptth]\nno_such_key = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'no_such_key'"):
        load_ptth(["--config", path], {})


# -- --print-config -------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_print_config_masks_secrets(tmp_path: Path) -> None:
    config, wants = load_ptth(
        [
            "--print-config",
            "--token",
            "s3cret-token",
            "--proxy",
            "http://alice:pa55word@proxy.example:3128",
            "--router",
            "wss://bob:hunter2@router.example/ws?token=abc123",
        ],
        {},
    )
    assert wants
    text = settings.to_toml(PTTH, config)
    for secret in ("s3cret-token", "pa55word", "alice", "hunter2", "abc123"):
        assert secret not in text, text
    assert 'token = "***"' in text
    assert 'proxy = "http://***@proxy.example:3128"' in text
    router_config, _ = load_router(["--token", "r0uter-secret"], {})
    assert "r0uter-secret" not in settings.to_toml(ROUTER, router_config)


@pytest.mark.timeout(10)
def test_print_config_round_trips_through_config(tmp_path: Path) -> None:
    router_config, wants = load_router(
        [
            "--print-config",
            "--max-connections",
            "12",
            "--default-service",
            "none",
            "--trusted-proxies",
            "10.0.0.1,10.0.0.2",
            "--no-access-log",
            "--workers",
            "auto",
            "--token",
            "t",
        ],
        {},
    )
    assert wants
    path = write(tmp_path, settings.to_toml(ROUTER, router_config))
    loaded = load_config(["--config", path], {})
    assert loaded == dataclasses.replace(router_config, token="***")  # only the secret differs
    ptth_config, _ = load_ptth(
        ["m:app", "--host", "a.example", "--identity", "--weight", "2.5", "--instance", "i-9"], {}
    )
    path = write(tmp_path, settings.to_toml(PTTH, ptth_config))
    assert load_ptth(["--config", path], {})[0] == ptth_config


# -- serve(options=..., keyword=...) ---------------------------------------------------------


async def _never_called(scope: object, receive: object, send: object) -> None:
    raise AssertionError("no request can reach this app")


@pytest.mark.timeout(10)
def test_serve_with_options_and_a_keyword_is_a_config_error() -> None:
    options = ptth.BackendOptions(service="from-options")

    async def main() -> None:
        with pytest.raises(ConfigError, match="options= or keyword arguments, not both: service"):
            await ptth.serve(_never_called, "127.0.0.1:1", options=options, service="other")
        with pytest.raises(ConfigError, match="connections, token"):
            await ptth.serve_upstream(
                "http://127.0.0.1:1", "127.0.0.1:1", options=options, token="t", connections=2
            )

    anyio.run(main)
    # Keywords left at their defaults next to options= are not a clash; options wins whole.
    addresses, resolved = resolve_arguments(
        ["127.0.0.1:1"],
        options,
        service="default",
        hosts=(),
        path_prefix=None,
        token=None,
        connections=1,
        max_concurrent_streams=1000,
        max_connections=0,
        weight=1.0,
    )
    assert (addresses, resolved) == (["127.0.0.1:1"], options)
    bad = dataclasses.replace(options, connections=0)
    with pytest.raises(ConfigError, match="connections must be at least 1"):
        resolve_arguments(
            "127.0.0.1:1",
            bad,
            service="default",
            hosts=(),
            path_prefix=None,
            token=None,
            connections=1,
            max_concurrent_streams=1000,
            max_connections=0,
            weight=1.0,
        )


# -- example files and README tables ----------------------------------------------------------


@pytest.mark.timeout(10)
def test_example_files_load_to_the_defaults_and_list_every_key() -> None:
    router_file = ROOT / "examples" / "router.toml"
    ptth_file = ROOT / "examples" / "ptth.toml"
    assert load_config(["--config", str(router_file)], {}) == RouterConfig()
    assert load_ptth(["--config", str(ptth_file)], {})[0] == PtthConfig()
    for spec, path in ((ROUTER, router_file), (PTTH, ptth_file)):
        text = path.read_text()
        for name in spec.names():
            assert f"\n{name} = " in text or f"\n# {name} = " in text, f"{name} missing in {path}"
        # Generated, so the comments follow the model too.
        assert text == settings.example_toml(spec), f"regenerate {path}"


@pytest.mark.timeout(10)
def test_readme_tables_match_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in (ROUTER, PTTH):
        regenerated = settings.replace_blocks(readme, settings.readme_blocks(spec))
        assert regenerated == readme, (
            "README.md's tables differ from the model: "
            "python -m ptth.settings --update-readme README.md"
        )
        for name in spec.names():
            assert f"`{spec.env(name)}`" in readme
            if name not in spec.positional:
                assert f"| `{spec.flag(name)}" in readme


@pytest.mark.timeout(10)
def test_replace_blocks_detects_a_drifted_table() -> None:
    text = "intro\n<!-- flags:ptth -->\n| stale |\n<!-- /flags:ptth -->\nafter\n"
    new = settings.replace_blocks(text, {"flags:ptth": settings.markdown_flags(PTTH)})
    assert new != text and "| stale |" not in new and new.endswith("after\n")
    assert "`--max-streams`" in new
    with pytest.raises(ConfigError, match="markers"):
        settings.replace_blocks("no markers", {"flags:ptth": ""})


@pytest.mark.timeout(10)
def test_one_file_holds_both_programs_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[router]\ntoken = "t"\n\n[ptth]\ntoken = "t"\nrouter = "r:1"\n')
    assert load_config(["--config", path], {}).token == "t"
    config, _ = load_ptth(["--config", path], {})
    assert (config.token, config.router) == ("t", ("r:1",))
    # A ptth file with only the router table: nothing for ptth, its defaults.
    path = write(tmp_path, '[router]\ntoken = "t"\n')
    assert load_ptth(["--config", path], {})[0] == PtthConfig()
    path = write(tmp_path, 'stray = 1\n[router]\ntoken = "t"\n')
    with pytest.raises(ConfigError, match="unknown setting 'stray'"):
        load_config(["--config", path], {})
