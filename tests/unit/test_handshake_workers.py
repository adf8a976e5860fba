"""The worker fields of the tunnel handshake (ARCHITECTURE.md, "Several cores")."""

from __future__ import annotations

import pytest

from ptth.errors import HandshakeRefused
from ptth.proto.handshake import ClientHandshake, Registration, ServerHandshake, WorkerInfo


def _exchange(
    worker: WorkerInfo | None, covered: tuple[str, ...] = ()
) -> tuple[ClientHandshake, ServerHandshake]:
    client = ClientHandshake(Registration(service="api"), "router:8887", covered=covered)
    server = ServerHandshake(worker=worker)
    return client, server


def test_101_names_the_worker_and_the_count() -> None:
    client, server = _exchange(WorkerInfo("ab12/1", 4))
    assert server.receive(client.request_bytes()) is not None
    accepted = client.receive(server.accept("t1", ()))
    assert accepted is not None
    assert accepted.worker == WorkerInfo("ab12/1", 4)


def test_router_of_one_process_names_no_worker() -> None:
    client, server = _exchange(None, covered=("ab12/0",))
    assert server.receive(client.request_bytes()) is not None  # the list is ignored
    response = server.accept("t1", ())
    assert b"ptth-worker" not in response.lower()
    accepted = client.receive(response)
    assert accepted is not None and accepted.worker is None


def test_a_covered_worker_answers_421_with_its_id() -> None:
    client, server = _exchange(WorkerInfo("ab12/0", 2), covered=("ab12/1", "ab12/0"))
    with pytest.raises(HandshakeRefused) as caught:
        server.receive(client.request_bytes())
    assert caught.value.status == 421
    refusal = server.refuse(421, caught.value.reason)
    assert b"Ptth-Worker: ab12/0\r\n" in refusal
    with pytest.raises(HandshakeRefused) as seen:
        client.receive(refusal)
    assert seen.value.status == 421 and seen.value.retryable


def test_a_worker_not_in_the_list_registers() -> None:
    client, server = _exchange(WorkerInfo("ab12/1", 2), covered=("ab12/0", "ab12/10"))
    assert server.receive(client.request_bytes()) is not None


@pytest.mark.parametrize(
    ("worker", "count"),
    [
        ("", "2"),
        ("x" * 40 + "/1", "2"),
        ("ab/1", "0"),
        ("ab/1", "99999"),
        ("ab/1", "²"),
        ("ab/1", ""),
        ("a b/1", "2"),
        ("ab/one", "2"),
    ],
)
def test_invalid_worker_fields_are_ignored(worker: str, count: str) -> None:
    client = ClientHandshake(Registration(), "router:8887")
    client.request_bytes()
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: reverse\r\n"
        f"Selected-ALPN: h2\r\nPtth-Tunnel-Id: t\r\nPtth-Worker: {worker}\r\n"
        f"Ptth-Workers: {count}\r\n\r\n"
    ).encode()
    accepted = client.receive(response)
    assert accepted is not None and accepted.worker is None


def test_worker_info_checks_its_values() -> None:
    with pytest.raises(ValueError):
        WorkerInfo("no-slash", 2)
    with pytest.raises(ValueError):
        WorkerInfo("ab/1", 0)
