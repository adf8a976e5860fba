"""``HOST:PORT`` parsing shared by the helper and the router; no I/O."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["format_address", "parse_address"]


def parse_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into a pair; a clear error for anything else."""
    host, sep, port_text = address.strip().rpartition(":")
    low = 0 if allow_port_zero else 1
    if not sep or not host or not port_text.isdigit() or not (low <= int(port_text) < 65536):
        raise ConfigError(f"address must be HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
