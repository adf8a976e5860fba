"""The front end's limits, one frozen value per router (pure: no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FrontLimits"]


@dataclass(frozen=True)
class FrontLimits:
    """Timeouts and caps at the door (ARCHITECTURE.md, "The front end"); see RouterConfig."""

    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    write_timeout: float = 60.0
    max_requests_per_connection: int = 10_000
    max_header_size: int = 64 * 1024
    max_header_fields: int = 100
    max_concurrent_streams: int = 100
