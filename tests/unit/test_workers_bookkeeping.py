"""Covering a multi-worker router (ptth/_workers.py) and restarting workers (router/workers.py)."""

from __future__ import annotations

import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptth._workers import REDIAL_DELAY, WorkerBook, describe_worker
from ptth.errors import ConfigError
from ptth.proto.handshake import MAX_HEAD_SIZE, ClientHandshake, Registration, WorkerInfo
from router.config import MAX_WORKERS, RouterConfig, load_config
from router.workers import (
    MAX_START_FAILURES,
    START_WINDOW,
    RestartPolicy,
    bind_sockets,
    worker_count,
)

KEY = ("127.0.0.1", 8887)


def w(index: int, count: int = 3, run: str = "r1") -> WorkerInfo:
    return WorkerInfo(f"{run}/{index}", count)


def test_first_101_grows_the_slots_to_every_worker() -> None:
    book = WorkerBook(per_worker=2)
    assert book.slots(KEY) == 2 and book.new_slots(KEY) == []  # slots 0 and 1 run already
    assert book.registered(KEY, w(1))
    assert book.slots(KEY) == 6
    assert book.new_slots(KEY) == [2, 3, 4, 5]
    assert book.new_slots(KEY) == []  # started once


def test_a_worker_is_covered_once_it_holds_its_tunnels() -> None:
    book = WorkerBook(per_worker=2)
    book.registered(KEY, w(0))
    assert book.covered(KEY) == ()
    book.registered(KEY, w(0))
    book.registered(KEY, w(2))
    assert book.covered(KEY) == ("r1/0",)
    assert not book.complete(KEY)
    book.dropped(KEY, w(0))
    assert book.covered(KEY) == ()


def test_a_third_tunnel_to_one_worker_is_surplus() -> None:
    book = WorkerBook(per_worker=1)
    assert book.registered(KEY, w(0, 2))
    assert not book.registered(KEY, w(0, 2))  # two slots raced to the same worker
    book.dropped(KEY, w(0, 2))  # the surplus one drained
    assert book.covered(KEY) == ("r1/0",)
    assert book.registered(KEY, w(1, 2))
    assert book.complete(KEY)


def test_routers_without_workers_count_as_before() -> None:
    book = WorkerBook(per_worker=1)
    assert book.registered(KEY, None) and book.registered(KEY, None)
    book.dropped(KEY, None)
    assert book.covered(KEY) == () and book.slots(KEY) == 1


def test_addresses_are_counted_apart() -> None:
    book = WorkerBook(per_worker=1)
    book.registered(KEY, w(0, 2))
    other = ("127.0.0.1", 9999)
    assert book.covered(other) == () and book.slots(other) == 1


def test_fewer_workers_after_a_restart_retire_the_extra_slots() -> None:
    book = WorkerBook(per_worker=1)
    book.registered(KEY, w(0, 4))
    assert book.new_slots(KEY) == [1, 2, 3]
    book.dropped(KEY, w(0, 4))
    book.registered(KEY, w(1, 2, run="r2"))  # the router came back with two workers
    assert not book.retire(KEY, 1)
    assert book.retire(KEY, 3) and book.retire(KEY, 2)
    book.registered(KEY, w(0, 4, run="r3"))
    assert book.new_slots(KEY) == [2, 3]  # free to start again


def test_complete_counts_only_the_latest_run() -> None:
    book = WorkerBook(per_worker=1)
    book.registered(KEY, w(0, 2, run="old"))
    book.registered(KEY, w(1, 2, run="new"))  # the old tunnel has not dropped yet
    assert not book.complete(KEY)


def test_redial_delay_is_short_and_jittered() -> None:
    rng = random.Random(1)
    delays = {WorkerBook.redial_delay(rng) for _ in range(50)}
    assert len(delays) > 40 and all(0 <= d <= REDIAL_DELAY for d in delays)


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 8),
    per_worker=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    drops=st.lists(st.integers(0, 100), max_size=20),
)
def test_slots_dialling_at_random_cover_every_worker(
    count: int, per_worker: int, seed: int, drops: list[int]
) -> None:
    """A model of the helper: every free slot dials a random worker (what SO_REUSEPORT does),
    listing the covered ones; covered workers refuse, surplus tunnels drain. Random drops
    (worker restarts) are always re-covered, and no worker ever holds more than needed."""
    rng = random.Random(seed)
    book = WorkerBook(per_worker)
    held: dict[int, WorkerInfo | None] = {}  # slot -> worker of its tunnel
    dials = 0
    pending_drops = list(drops)
    for _ in range(10_000):
        slots = book.slots(KEY)
        free = [s for s in range(slots) if s not in held]
        if not free:
            if book.complete(KEY) and not pending_drops:
                break
            if pending_drops:  # a tunnel drops
                victim = sorted(held)[pending_drops.pop() % len(held)]
                book.dropped(KEY, held.pop(victim))
            continue
        slot = rng.choice(free)
        target = w(rng.randrange(count), count)
        dials += 1
        if target.id in book.covered(KEY):
            continue  # 421, dial again
        if book.registered(KEY, target):
            held[slot] = target
        else:
            book.dropped(KEY, target)  # surplus: drained at once
    assert book.complete(KEY)
    per = [sum(1 for t in held.values() if t == w(i, count)) for i in range(count)]
    assert per == [per_worker] * count
    assert dials < 10_000


def test_restart_policy_backs_off_then_gives_up() -> None:
    policy = RestartPolicy(base=0.5, cap=4.0)
    delays = [policy.exited(lived=0.1) for _ in range(MAX_START_FAILURES - 1)]
    assert delays == [0.5, 1.0, 2.0, 4.0][: MAX_START_FAILURES - 1]
    assert policy.exited(lived=0.1) is None


def test_restart_policy_forgives_a_worker_that_ran_a_while() -> None:
    policy = RestartPolicy(base=0.5, cap=4.0)
    for _ in range(MAX_START_FAILURES - 1):
        policy.exited(lived=1.0)
    assert policy.exited(lived=START_WINDOW + 1) == 0.5
    assert policy.exited(lived=1.0) == 0.5  # counting starts over


def test_worker_count() -> None:
    assert worker_count("3") == 3
    assert worker_count(" AUTO ") >= 1


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT is Linux/BSD")
def test_bind_sockets_shares_one_port() -> None:
    groups = bind_sockets("127.0.0.1:0", 3, reuse_port=True)
    try:
        ports = {sock.getsockname()[1] for group in groups for sock in group}
        assert len(groups) == 3 and len(ports) == 1
    finally:
        for group in groups:
            for sock in group:
                sock.close()


def test_bind_sockets_reports_a_busy_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            bind_sockets(f"127.0.0.1:{taken.getsockname()[1]}", 1, reuse_port=False)


@pytest.mark.parametrize("value", ["0", "-1", "two", "257", ""])
def test_config_refuses_bad_worker_counts(value: str) -> None:
    with pytest.raises(ConfigError, match="workers"):
        RouterConfig(workers=value)


def test_config_takes_auto_and_numbers() -> None:
    assert RouterConfig(workers="auto").workers == "auto"
    assert load_config(["--workers", "4", "--reuse-port", "false"]).reuse_port is False
    assert load_config([], environ={"PTTH_WORKERS": "3"}).workers == "3"


def test_the_covered_list_of_the_most_workers_fits_in_a_handshake() -> None:
    everyone = tuple(f"{'f' * 8}/{i}" for i in range(MAX_WORKERS))
    request = ClientHandshake(Registration(), "router:8887", covered=everyone).request_bytes()
    assert len(request) < MAX_HEAD_SIZE // 2


def test_log_note_names_the_worker() -> None:
    assert describe_worker(None) == ""
    assert describe_worker(w(2, 4)) == ", worker r1/2 of 4"


def test_an_extra_tunnel_lists_every_other_worker() -> None:
    assert WorkerBook.others(w(1, 4)) == ("r1/0", "r1/2", "r1/3")
    assert WorkerBook.others(w(0, 1)) == ()
    assert WorkerBook.others(None) == ()
    assert WorkerBook.extra_dials(None) == 1 and WorkerBook.extra_dials(w(0, 4)) == 32


def test_tunnels_are_tracked_by_worker() -> None:
    book = WorkerBook(per_worker=1)
    first, second = object(), object()
    book.track(first, w(0))
    book.track(second, None)
    assert book.worker_of(first) == w(0) and book.worker_of(second) is None
    book.untrack(first)
    book.untrack(first)  # twice is harmless
    assert book.worker_of(first) is None
