"""Covering every worker of a multi-process router; bookkeeping only, no I/O.

ARCHITECTURE.md, "Several cores". A router started with ``--workers N`` answers each handshake
from one of N processes sharing its ports, and names it in the 101 (``Ptth-Worker``,
``Ptth-Workers``). A request can only be routed by the worker that received it, so a backend
must hold tunnels to every worker. The helper keeps ``connections`` tunnel slots per worker for
each router address: the first 101 that names N workers grows the slots to ``connections * N``,
and each dial lists the workers already covered (``Ptth-Covered-Workers``), which answer 421,
so a slot dials again until it reaches a worker still missing. A race can still land two slots
on one worker; the surplus tunnel is then drained and its slot dials again. On-demand extra
tunnels (ptth/_scaling.py) are a worker's own: opened when that worker's tunnels are full, they
list every other worker as covered so only that one takes them, and they are not counted in the
coverage. A router that names no worker (one process, or an older router) is covered by the
slots as they always were.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from .proto.handshake import WorkerInfo

__all__ = ["REDIAL_DELAY", "WorkerBook", "describe_worker"]

# Upper bound of the jittered pause before dialling again after a 421: the next dial most
# likely reaches another worker (the kernel spreads connections), so waiting longer buys nothing.
REDIAL_DELAY = 0.05


def describe_worker(worker: WorkerInfo | None) -> str:
    """ ", worker <id> of <count>" for a log line; "" for a router of one process."""
    return "" if worker is None else f", worker {worker.id} of {worker.count}"


@dataclass
class _Router:
    count: int = 1  # workers, as the latest 101 said
    run: str = ""  # the router run that said it (the id's part before "/")
    held: Counter[str] = field(default_factory=Counter)
    running: set[int] = field(default_factory=set)  # connector slots alive


class WorkerBook:
    """Per router address: which workers hold how many of the slots' tunnels."""

    def __init__(self, per_worker: int) -> None:
        self.per_worker = per_worker
        self._routers: dict[tuple[str, int], _Router] = {}
        self._tunnels: dict[Hashable, WorkerInfo | None] = {}  # every live tunnel's worker

    def track(self, tunnel: Hashable, worker: WorkerInfo | None) -> None:
        self._tunnels[tunnel] = worker

    def untrack(self, tunnel: Hashable) -> None:
        self._tunnels.pop(tunnel, None)

    def worker_of(self, tunnel: Hashable) -> WorkerInfo | None:
        return self._tunnels.get(tunnel)

    @staticmethod
    def others(worker: WorkerInfo | None) -> tuple[str, ...]:
        """Every other worker of ``worker``'s run: what an extra tunnel for it lists as covered."""
        if worker is None:
            return ()
        run = worker.id.rpartition("/")[0]
        ids = (f"{run}/{index}" for index in range(worker.count))
        return tuple(other for other in ids if other != worker.id)

    @staticmethod
    def extra_dials(worker: WorkerInfo | None) -> int:
        """Dials an extra tunnel for ``worker`` may take (each reaches it with chance 1/N):
        8N gives up with chance e^-8, about 3 in 10,000."""
        return 1 if worker is None else 8 * worker.count

    def _of(self, key: tuple[str, int]) -> _Router:
        router = self._routers.get(key)
        if router is None:
            router = self._routers[key] = _Router(running=set(range(self.per_worker)))
        return router

    def covered(self, key: tuple[str, int]) -> tuple[str, ...]:
        """Workers that already hold ``per_worker`` tunnels (the Ptth-Covered-Workers list)."""
        held = self._of(key).held
        return tuple(sorted(w for w, n in held.items() if n >= self.per_worker))

    def registered(self, key: tuple[str, int], worker: WorkerInfo | None) -> bool:
        """A slot's tunnel is up; False when it is surplus (its worker already had enough)."""
        if worker is None:
            return True
        router = self._of(key)
        router.count = worker.count
        router.run = worker.id.rpartition("/")[0]
        router.held[worker.id] += 1
        return router.held[worker.id] <= self.per_worker

    def dropped(self, key: tuple[str, int], worker: WorkerInfo | None) -> None:
        """A tunnel that ``registered`` counted is gone (surplus or not)."""
        if worker is None:
            return
        held = self._of(key).held
        held[worker.id] -= 1
        if held[worker.id] <= 0:
            del held[worker.id]

    def slots(self, key: tuple[str, int]) -> int:
        """How many connector slots the router's workers need."""
        return self.per_worker * self._of(key).count

    def new_slots(self, key: tuple[str, int]) -> list[int]:
        """Slots to start now (each marked running): the router named more workers."""
        router = self._of(key)
        fresh = [s for s in range(self.slots(key)) if s not in router.running]
        router.running.update(fresh)
        return fresh

    def retire(self, key: tuple[str, int], slot: int) -> bool:
        """True when ``slot`` is beyond what the workers need (the router restarted with
        fewer): its connector should end, and the slot may be started again later."""
        router = self._of(key)
        if slot < self.slots(key):
            return False
        router.running.discard(slot)
        return True

    def complete(self, key: tuple[str, int]) -> bool:
        """Every worker of the latest run holds its tunnels (as far as its count says)."""
        router = self._of(key)
        run = [w for w in self.covered(key) if w.rpartition("/")[0] == router.run]
        return len(run) >= router.count

    @staticmethod
    def redial_delay(rng: random.Random) -> float:
        return rng.uniform(0.0, REDIAL_DELAY)
