"""One configuration mechanism for ``python -m router`` and ``python -m ptth``.

A program's settings are a frozen dataclass (the model) plus a :class:`Spec` (help, flag
spellings, checks). From them come the flags, the ``PTTH_<NAME>`` variables, the TOML keys
(``--config FILE``), ``--print-config`` and the README's tables. Precedence: defaults < TOML <
environment < flags; the environment is read when loading, never when building the parser. A bad
value is a :class:`ConfigError` naming the key, the value, where it came from and what was
expected. ``python -m ptth.settings --markdown router|ptth`` prints the flag table,
``--keys`` the key table, ``--example`` a commented TOML file of the defaults, and
``--update-readme FILE`` rewrites the tables between ``<!-- flags:NAME -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["Spec", "build_parser", "example_toml", "load", "markdown_keys", "markdown_flags"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
MASK = "***"
PROGRAMS = ("router", "ptth")  # the TOML tables: [router], [ptth]


@dataclass(frozen=True)
class Spec:
    """How one program's model is exposed; ``model`` is a frozen dataclass with defaults."""

    program: str  # "router" or "ptth": the prog name, the TOML table, the docs' marker
    model: type[Any]
    help: Mapping[str, str]
    docs: Mapping[str, str] = field(default_factory=dict)  # README meaning, if not the help
    prog: str = ""
    description: str = ""
    flags: Mapping[str, str] = field(default_factory=dict)  # field -> flag, if not --field-name
    metavars: Mapping[str, str] = field(default_factory=dict)
    repeatable: frozenset[str] = frozenset()  # tuple fields whose flag repeats
    positional: frozenset[str] = frozenset()
    optional_value: Mapping[str, str] = field(default_factory=dict)  # flag alone means this
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    positive: frozenset[str] = frozenset()
    non_negative: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    # Words meaning None for a "str | None" field; default ("", "none").
    none_words: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    bool_values: bool = True  # "--flag true|false" besides "--flag" and "--no-flag"
    default_text: Mapping[str, str] = field(default_factory=dict)  # docs, for computed defaults

    def names(self) -> list[str]:
        return [f.name for f in fields(self.model)]

    def kind(self, name: str) -> str:
        return str({f.name: f for f in fields(self.model)}[name].type)

    def flag(self, name: str) -> str:
        if name in self.positional:
            return name.upper()
        return self.flags.get(name, "--" + name.replace("_", "-"))

    def env(self, name: str) -> str:
        return "PTTH_" + name.upper()


def _expected(spec: Spec, name: str) -> str:
    kind = spec.kind(name)
    if name in spec.choices:
        return "one of " + ", ".join(spec.choices[name])
    if kind.startswith("bool |"):
        return "true, false or a directory"
    if kind.startswith("bool"):
        return "true or false"
    if kind.startswith("int"):
        return "an integer"
    if kind.startswith("float"):
        return "a number"
    if kind.startswith("tuple"):
        return "a list of strings (or one comma-separated string)"
    return "a string"


def _convert(spec: Spec, name: str, value: Any) -> Any:
    """``value`` (TOML, environment or flag) as the model's type; ValueError if it is not."""
    kind = spec.kind(name)
    if kind.startswith("tuple"):
        items = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ValueError(value)
        return tuple(p.strip() for item in items for p in item.split(",") if p.strip())
    if isinstance(value, list | dict):
        raise ValueError(value)
    text = str(value).strip()
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if kind.startswith("bool |") and text:
            return text  # identity: a directory
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError(value)  # TOML true for a number or a string: a mistake
    if kind.startswith("int"):
        if isinstance(value, float):
            raise ValueError(value)
        return int(text)
    if kind.startswith("float"):
        return float(text)
    if kind.endswith("| None") and text.lower() in spec.none_words.get(name, ("", "none")):
        return None
    if name in spec.choices and text not in spec.choices[name]:
        raise ValueError(value)
    return text


def coerce(spec: Spec, name: str, value: Any, source: str) -> Any:
    """One value checked: its type, its choices, its sign; the error says all of it."""
    key = name
    try:
        result = _convert(spec, name, value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key} = {value!r} (from {source}): expected {_expected(spec, name)}"
        ) from None
    if name in spec.positive and not result > 0:
        raise ConfigError(f"{key} = {value!r} (from {source}): expected a positive number")
    if name in spec.non_negative and not result >= 0:
        raise ConfigError(f"{key} = {value!r} (from {source}): expected a number >= 0")
    return result


def build_parser(spec: Spec) -> argparse.ArgumentParser:
    """Flags for every field; all default to None so that unset ones fall through to the env."""
    p = argparse.ArgumentParser(
        prog=spec.prog or f"python -m {spec.program}",
        description=spec.description,
        epilog="Every flag also reads PTTH_<NAME> from the environment and <name> from --config "
        "(precedence: defaults < TOML < environment < flags).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML (secrets masked) and exit",
    )
    defaults = spec.model()
    for f in fields(spec.model):
        name = f.name
        default = getattr(defaults, name)
        text = spec.default_text.get(name, _show(default))
        help_text = f"{spec.help[name]} (default: {text}; env {spec.env(name)})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if name in spec.positional:
            p.add_argument(name, nargs="?", default=None, metavar=name.upper(), help=help_text)
            continue
        flag = spec.flag(name)
        extra: dict[str, Any] = {}
        if name in spec.metavars:
            extra["metavar"] = spec.metavars[name]
        if name in spec.optional_value:
            p.add_argument(
                flag, dest=name, nargs="?", const=spec.optional_value[name], help=help_text, **extra
            )
        elif spec.kind(name).startswith("bool"):
            if spec.bool_values:
                p.add_argument(flag, dest=name, nargs="?", const="true", help=help_text)
            else:
                p.add_argument(flag, dest=name, action="store_const", const="true", help=help_text)
            p.add_argument(
                "--no-" + flag[2:],
                dest=name,
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        elif name in spec.repeatable:
            p.add_argument(flag, dest=name, action="append", help=help_text, **extra)
        else:
            p.add_argument(flag, dest=name, help=help_text, **extra)
    return p


def read_toml(spec: Spec, path: str) -> dict[str, Any]:
    """The settings in ``path`` (top level, or this program's ``[router]`` / ``[ptth]`` table),
    checked."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    # One file may hold both programs' tables; each reads its own and skips the other's.
    tables = {k for k, v in data.items() if k in PROGRAMS and isinstance(v, dict)}
    if tables:
        extra = sorted(set(data) - tables)
        if extra:
            raise ConfigError(f"unknown setting {extra[0]!r} in {path} (outside the tables)")
        data = data.get(spec.program, {})
    known = set(spec.names())
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown setting {key!r} in {path}")
        values[name] = coerce(spec, name, value, path)
    return values


def load(
    spec: Spec,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, argparse.Namespace]:
    """The model instance from defaults < TOML < environment < flags, and the parsed flags."""
    args = build_parser(spec).parse_args(argv)
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_toml(spec, args.config))
    for name in spec.names():
        env_value = environ.get(spec.env(name))
        if env_value is not None:
            values[name] = coerce(spec, name, env_value, spec.env(name))
        flag_value = getattr(args, name)
        if flag_value is not None:
            values[name] = coerce(spec, name, flag_value, spec.flag(name))
    return spec.model(**values), args


# -- output: --print-config, example files, README tables ---------------------------------


_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_URL_TOKEN = re.compile(r"([?&](?:token|access_token|key|password)=)[^&\s]*", re.IGNORECASE)


def mask(text: str) -> str:
    """Credentials inside a URL (``user:password@``, ``?token=``) replaced by ``***``."""
    return _URL_TOKEN.sub(rf"\1{MASK}", _URL_USERINFO.sub(rf"\1{MASK}@", text))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings


def _toml_line(spec: Spec, name: str, value: Any, default: Any) -> str:
    if value is None:
        if default is None:
            return f"# {name} = (unset)"
        return f'{name} = "none"'
    return f"{name} = {_toml_value(value)}"


def to_toml(spec: Spec, config: Any, *, masked: bool = True) -> str:
    """``config`` as a TOML file that ``--config`` loads back (secrets masked)."""
    defaults = spec.model()
    lines = [f"# effective configuration of python -m {spec.program}", f"[{spec.program}]"]
    for name in spec.names():
        value = getattr(config, name)
        if masked and value is not None:
            if name in spec.secrets:
                value = MASK
            elif isinstance(value, str):
                value = mask(value)
            elif isinstance(value, tuple):
                value = tuple(mask(v) for v in value)
        lines.append(_toml_line(spec, name, value, getattr(defaults, name)))
    return "\n".join(lines) + "\n"


def example_toml(spec: Spec) -> str:
    """Every key with its default and its help as a comment (examples/<program>.toml)."""
    defaults = spec.model()
    lines = [
        f"# python -m {spec.program} --config examples/{spec.program}.toml",
        "# Every key with its default (generated: python -m ptth.settings --example "
        f"{spec.program}).",
        "# Each key some_name is also the flag --some-name and the variable PTTH_SOME_NAME;",
        "# precedence: defaults < this file < environment < flags. Unset keys are comments.",
        f"[{spec.program}]",
    ]
    for name in spec.names():
        lines.append("")
        lines.append(f"# {spec.help[name]}")
        lines.append(_toml_line(spec, name, getattr(defaults, name), getattr(defaults, name)))
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "none"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_flags(spec: Spec) -> str:
    defaults = spec.model()
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for name in spec.names():
        flag = f"`{spec.flag(name)}`"
        if name in spec.optional_value and name in spec.metavars:
            flag = f"`{spec.flag(name)} [{spec.metavars[name]}]`"  # the flag alone works too
        if spec.kind(name).startswith("bool") and name not in spec.optional_value:
            flag += f" / `--no-{spec.flag(name)[2:]}`"
        default = spec.default_text.get(name, _show(getattr(defaults, name)))
        meaning = spec.docs.get(name, spec.help[name])
        rows.append(f"| {flag} | `{_cell(default)}` | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def markdown_keys(spec: Spec) -> str:
    defaults = spec.model()
    rows = ["| TOML key | environment | default |", "| --- | --- | --- |"]
    for name in spec.names():
        default = spec.default_text.get(name, _show(getattr(defaults, name)))
        rows.append(f"| `{name}` | `{spec.env(name)}` | `{_cell(default)}` |")
    return "\n".join(rows) + "\n"


def readme_blocks(spec: Spec) -> dict[str, str]:
    """Marker name -> generated text, for the README."""
    return {
        f"flags:{spec.program}": markdown_flags(spec),
        f"keys:{spec.program}": markdown_keys(spec),
    }


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with what sits between ``<!-- NAME -->`` and ``<!-- /NAME -->`` regenerated."""
    for marker, body in blocks.items():
        start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
        head, found, rest = text.partition(start)
        if not found or end not in rest:
            raise ConfigError(f"markers {start.strip()} ... {end} not found")
        text = head + start + body + end + rest.partition(end)[2]
    return text


def _specs() -> dict[str, Callable[[], Spec]]:
    def router_spec() -> Spec:
        from router.config import ROUTER  # the router package depends on ptth, not back

        return ROUTER

    def ptth_spec() -> Spec:
        from .cli_config import PTTH

        return PTTH

    return {"router": router_spec, "ptth": ptth_spec}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ptth.settings", description=__doc__)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", choices=("router", "ptth"), help="the flag table")
    group.add_argument("--keys", choices=("router", "ptth"), help="the configuration key table")
    group.add_argument("--example", choices=("router", "ptth"), help="a commented TOML file")
    group.add_argument("--update-readme", metavar="FILE", help="regenerate the README's tables")
    args = p.parse_args(argv)
    specs = _specs()
    if args.update_readme:
        with open(args.update_readme, encoding="utf-8") as f:
            text = f.read()
        for make in specs.values():
            text = replace_blocks(text, readme_blocks(make()))
        with open(args.update_readme, "w", encoding="utf-8") as f:
            f.write(text)
    elif args.markdown:
        sys.stdout.write(markdown_flags(specs[args.markdown]()))
    elif args.keys:
        sys.stdout.write(markdown_keys(specs[args.keys]()))
    else:
        sys.stdout.write(example_toml(specs[args.example]()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
