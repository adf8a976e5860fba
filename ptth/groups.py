"""Unwrap exception groups at the edges where callers branch on one error type."""

from __future__ import annotations

import anyio

__all__ = ["leaves", "unwrap"]


def leaves(exc: BaseException) -> list[BaseException]:
    """Every non-group exception inside ``exc`` (depth first)."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(leaves(inner))
        return out
    return [exc]


def unwrap(group: BaseExceptionGroup[BaseException], prefer: type[BaseException]) -> BaseException:
    """The single meaningful error in ``group``: the first ``prefer`` leaf, else the only
    non-Cancelled leaf, else the group itself (several unrelated failures stay grouped)."""
    found = leaves(group)
    for leaf in found:
        if isinstance(leaf, prefer):
            return leaf
    cancelled = anyio.get_cancelled_exc_class()
    meaningful = [leaf for leaf in found if not isinstance(leaf, cancelled)]
    if len(meaningful) == 1:
        return meaningful[0]
    return group
