"""The admin listener (ARCHITECTURE.md, "Operations: the admin listener"): metrics, health, the
status JSON and the live status page with its request inspector, on an address of its own."""

from .server import Admin, admin_address, admin_for

__all__ = ["Admin", "admin_address", "admin_for"]
