"""Unwrap trio's exception groups at the edges where callers branch on one error type."""

from __future__ import annotations

import trio

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
    meaningful = [leaf for leaf in found if not isinstance(leaf, trio.Cancelled)]
    if len(meaningful) == 1:
        return meaningful[0]
    return group
