"""A real grpcio server for the gRPC test: ``python -m tests.grpc_proto.server STUBS_DIR``.

Listens on 127.0.0.1 with an ephemeral port and prints ``GRPC PORT <n>`` once serving. Every
call sends initial metadata ``x-initial: hello`` and trailing metadata naming what it saw
(``x-seen-client`` echoes the client's ``x-client`` metadata); ``fail_with`` makes it abort with
that status code after its replies (``details`` say which call failed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

sys.path.insert(0, sys.argv[1])

import ptth_echo_pb2 as pb
import ptth_echo_pb2_grpc as pb_grpc


def _start(context: Any) -> None:
    context.send_initial_metadata((("x-initial", "hello"),))


def _trailing(context: Any, **extra: str) -> None:
    seen = dict(context.invocation_metadata()).get("x-client", "-")
    fields = [("x-seen-client", seen), *extra.items()]
    context.set_trailing_metadata(tuple((k.replace("_", "-"), v) for k, v in fields))


def _maybe_fail(context: Any, request: Any, call: str) -> None:
    if request.fail_with:
        context.abort(getattr(grpc.StatusCode, request.fail_with), f"{call}: {request.text}")


class Echo(pb_grpc.EchoServicer):  # type: ignore[misc]
    def Unary(self, request: Any, context: Any) -> Any:
        if request.fail_with:
            # No reply and no initial metadata: a "trailers-only" response (one HEADERS frame).
            _trailing(context, x_call="unary")
            _maybe_fail(context, request, "unary")
        _start(context)
        _trailing(context, x_call="unary")
        return pb.EchoReply(text="echo: " + request.text, payload=request.payload)

    def ServerStream(self, request: Any, context: Any) -> Iterator[Any]:
        _start(context)
        for i in range(request.count):
            yield pb.EchoReply(text=f"{request.text} #{i}", index=i, payload=request.payload)
        _trailing(context, x_call="server-stream", x_total=str(request.count))
        _maybe_fail(context, request, "server-stream")

    def ClientStream(self, requests: Iterator[Any], context: Any) -> Any:
        _start(context)
        texts, size = [], 0
        for request in requests:
            texts.append(request.text)
            size += len(request.payload)
        _trailing(context, x_call="client-stream", x_bytes=str(size))
        return pb.EchoReply(text="+".join(texts), index=len(texts))

    def Bidi(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        _start(context)
        count = 0
        for request in requests:
            _maybe_fail(context, request, "bidi")
            yield pb.EchoReply(text="echo: " + request.text, index=count, payload=request.payload)
            count += 1
        _trailing(context, x_call="bidi", x_total=str(count))


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_EchoServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"GRPC PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
