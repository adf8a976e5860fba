"""gRPC end to end (issue 3, item 3): a grpcio client → router (h2c) → tunnel → agent → grpcio.

Three real processes besides the test: the grpcio server (``tests/grpc_proto/server.py``), the
agent (``python -m ptth --to h2c://...``) and, in-process, the router. The client is grpcio's own,
on an insecure channel to the router's front end (HTTP/2 prior knowledge). All four call types,
status codes with details, and initial and trailing metadata are checked: gRPC's status travels in
HTTP/2 trailers, so this only passes if trailers survive both hops.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from tests.e2e.agent_support import agent_process, child
from tests.support import free_port, require_module, start_router

grpc = require_module("grpc", reason="grpcio is not installed (pip install -e '.[dev]')")
require_module("grpc_tools", reason="grpcio-tools is not installed (pip install -e '.[dev]')")

GRPC_PORT = re.compile(rb"GRPC PORT (\d+)")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stubs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, ModuleType, ModuleType]]:
    from tests.grpc_proto.generate import generate

    out = generate(tmp_path_factory.mktemp("grpc_stubs"))
    sys.path.insert(0, str(out))
    try:
        yield (
            out,
            importlib.import_module("ptth_echo_pb2"),
            importlib.import_module("ptth_echo_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))
        for name in ("ptth_echo_pb2", "ptth_echo_pb2_grpc"):
            sys.modules.pop(name, None)


@asynccontextmanager
async def grpc_through_router(stubs_dir: Path) -> AsyncIterator[str]:
    """grpcio server + router + agent; yields the router's front end as HOST:PORT."""
    async with trio.open_nursery() as nursery:
        server_args = ("-m", "tests.grpc_proto.server", str(stubs_dir))
        async with child(nursery, *server_args) as server:
            port = int((await server.wait_for(GRPC_PORT))[1])
            router = await start_router(nursery)
            target = f"h2c://127.0.0.1:{port}"
            async with agent_process(nursery, target, router.tunnel):
                await router.wait_tunnels(1)
                yield router.url.removeprefix("http://")
        nursery.cancel_scope.cancel()


def _channel(address: str) -> Any:
    # No proxy from the environment: the router is local.
    return grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


def _run_calls(address: str, pb: ModuleType, pb_grpc: ModuleType) -> None:
    """Every call type through the router; runs in a worker thread (grpcio blocks)."""
    with _channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = pb_grpc.EchoStub(channel)
        meta = (("x-client", "tester"),)

        # Unary: reply, initial and trailing metadata.
        reply, call = stub.Unary.with_call(
            pb.EchoRequest(text="hi", payload=b"\x00\x01"), metadata=meta, timeout=10
        )
        assert (reply.text, reply.payload) == ("echo: hi", b"\x00\x01")
        assert call.code() == grpc.StatusCode.OK
        assert ("x-initial", "hello") in call.initial_metadata()
        trailing = dict(call.trailing_metadata())
        assert trailing["x-seen-client"] == "tester"
        assert trailing["x-call"] == "unary"

        # A large unary message crosses both flow-controlled hops intact.
        big = bytes(range(256)) * (3 * MiB // 256)
        reply = stub.Unary(pb.EchoRequest(text="big", payload=big), timeout=20)
        assert reply.payload == big

        # Unary failure: status code, details and trailing metadata ("trailers-only" response).
        with pytest.raises(grpc.RpcError) as failed:
            stub.Unary(
                pb.EchoRequest(text="ghost", fail_with="NOT_FOUND"), metadata=meta, timeout=10
            )
        error: Any = failed.value
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "unary: ghost"
        assert dict(error.trailing_metadata())["x-call"] == "unary"

        # Server streaming.
        call = stub.ServerStream(pb.EchoRequest(text="tick", count=25), metadata=meta, timeout=10)
        replies = list(call)
        assert [r.text for r in replies] == [f"tick #{i}" for i in range(25)]
        assert call.code() == grpc.StatusCode.OK
        assert ("x-initial", "hello") in call.initial_metadata()
        assert dict(call.trailing_metadata())["x-total"] == "25"

        # Server streaming that fails after its replies: the status arrives in real trailers.
        call = stub.ServerStream(
            pb.EchoRequest(text="t", count=3, fail_with="RESOURCE_EXHAUSTED"), timeout=10
        )
        received = []
        with pytest.raises(grpc.RpcError) as failed:
            for r in call:
                received.append(r.index)
        assert received == [0, 1, 2]
        error = failed.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "server-stream: t"

        # Client streaming.
        def requests() -> Iterator[Any]:
            for i in range(10):
                yield pb.EchoRequest(text=f"p{i}", payload=b"x" * 100_000)

        reply, call = stub.ClientStream.with_call(requests(), metadata=meta, timeout=10)
        assert reply.text == "+".join(f"p{i}" for i in range(10))
        assert reply.index == 10
        trailing = dict(call.trailing_metadata())
        assert (trailing["x-bytes"], trailing["x-seen-client"]) == ("1000000", "tester")

        # Bidirectional, in lockstep: each reply arrives before the next request is sent, which
        # only works if neither hop buffers a direction until the other ends.
        import queue

        outbox: queue.Queue[Any] = queue.Queue()

        def lockstep() -> Iterator[Any]:
            while (item := outbox.get()) is not None:
                yield item

        call = stub.Bidi(lockstep(), metadata=meta, timeout=20)
        for i in range(20):
            outbox.put(pb.EchoRequest(text=f"m{i}"))
            reply = next(call)
            assert (reply.text, reply.index) == (f"echo: m{i}", i)
        outbox.put(None)
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK
        assert dict(call.trailing_metadata())["x-total"] == "20"

        # Bidirectional, failing mid-way with a status.
        def failing() -> Iterator[Any]:
            yield pb.EchoRequest(text="ok")
            yield pb.EchoRequest(text="bad", fail_with="PERMISSION_DENIED")

        call = stub.Bidi(failing(), timeout=10)
        with pytest.raises(grpc.RpcError) as failed:
            assert next(call).text == "echo: ok"
            next(call)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]

        # An unknown method is the server's UNIMPLEMENTED, not a proxy error.
        unknown = channel.unary_unary("/ptthtest.Echo/Nope")
        with pytest.raises(grpc.RpcError) as failed:
            unknown(b"", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def _run_concurrent(address: str, pb: ModuleType, pb_grpc: ModuleType) -> int:
    """Many calls in flight at once on one channel (one h2 connection multiplexing them)."""
    from concurrent.futures import ThreadPoolExecutor

    with _channel(address) as channel:
        stub = pb_grpc.EchoStub(channel)

        def one(i: int) -> int:
            replies = list(stub.ServerStream(pb.EchoRequest(text=f"c{i}", count=20), timeout=20))
            assert [r.index for r in replies] == list(range(20))
            return len(replies)

        with ThreadPoolExecutor(max_workers=32) as pool:
            return sum(pool.map(one, range(64)))


@pytest.mark.timeout(120)
async def test_grpc_calls_through_router_and_agent(
    stubs: tuple[Path, ModuleType, ModuleType],
) -> None:
    stubs_dir, pb, pb_grpc = stubs
    async with grpc_through_router(stubs_dir) as address:
        await trio.to_thread.run_sync(_run_calls, address, pb, pb_grpc)
        total = await trio.to_thread.run_sync(_run_concurrent, address, pb, pb_grpc)
        assert total == 64 * 20


@pytest.mark.timeout(60)
async def test_grpc_server_down_is_unavailable(stubs: tuple[Path, ModuleType, ModuleType]) -> None:
    """With the grpcio server gone the agent answers 502, which gRPC maps to UNAVAILABLE."""
    _, pb, pb_grpc = stubs

    async with trio.open_nursery() as nursery:
        router = await start_router(nursery)
        async with agent_process(nursery, f"h2c://127.0.0.1:{free_port()}", router.tunnel):

            def call() -> Any:
                with _channel(router.url.removeprefix("http://")) as channel:
                    stub = pb_grpc.EchoStub(channel)
                    with pytest.raises(grpc.RpcError) as failed:
                        stub.Unary(pb.EchoRequest(text="x"), timeout=10)
                    return failed.value.code()  # type: ignore[attr-defined]

            assert await trio.to_thread.run_sync(call) == grpc.StatusCode.UNAVAILABLE
        nursery.cancel_scope.cancel()
