"""The httpsock session core (ptth/httpsock/protocol.py) under a hostile network: requests and
answers lost, duplicated, reordered and retried must never corrupt, lose or duplicate a byte."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from ptth.httpsock.protocol import (
    ACK,
    EOF,
    SEQ,
    ClientSession,
    GetAnswer,
    GetRequest,
    Inbox,
    Limits,
    PutAnswer,
    PutRequest,
    ServerSession,
    SessionTable,
    binding,
    parse_offset,
)


def put_headers(answer: PutAnswer) -> dict[str, str]:
    headers = {ACK: str(answer.ack)}
    if answer.eof:
        headers[EOF] = "1"
    return headers


def get_response(answer: GetAnswer | None) -> tuple[int, dict[str, str], bytes]:
    if answer is None:  # held until the poll timeout
        return 204, {}, b""
    headers = {SEQ: str(answer.seq)}
    if answer.eof:
        headers[EOF] = "1"
    return answer.status, headers, answer.data


@dataclass
class World:
    limits: Limits
    client: ClientSession = field(init=False)
    server: ServerSession = field(init=False)
    up_written: bytearray = field(default_factory=bytearray)  # client app -> server app
    up_read: bytearray = field(default_factory=bytearray)
    down_written: bytearray = field(default_factory=bytearray)  # server app -> client app
    down_read: bytearray = field(default_factory=bytearray)
    requests: list[PutRequest | GetRequest] = field(default_factory=list)
    answers: list[tuple[str, int, dict[str, str], bytes]] = field(default_factory=list)
    counter: int = 0
    client_eof: bool = False
    server_eof: bool = False

    def __post_init__(self) -> None:
        self.client = ClientSession(self.limits)
        self.server = ServerSession("t", b"b", self.limits, 0.0)

    def payload(self, n: int) -> bytes:
        data = bytes((self.counter + i) % 251 for i in range(n))
        self.counter += n
        return data

    def client_write(self, n: int) -> None:
        n = min(n, self.client.write_room())
        if n and not self.client_eof:
            data = self.payload(n)
            self.client.outbox.write(data)
            self.up_written += data

    def server_write(self, n: int) -> None:
        n = min(n, self.server.app_room())
        if n and not self.server_eof:
            data = self.payload(n)
            self.server.app_write(data)
            self.down_written += data

    def client_eof_now(self) -> None:
        if not self.client_eof:
            self.client_eof = True
            self.client.outbox.close()

    def server_eof_now(self) -> None:
        if not self.server_eof:
            self.server_eof = True
            self.server.app_eof()

    def send_put(self) -> bool:
        request = self.client.next_put()
        if request is not None:
            self.requests.append(request)
        return request is not None

    def send_get(self) -> bool:
        request = self.client.next_get()
        if request is not None:
            self.requests.append(request)
        return request is not None

    def deliver(self, index: int, keep: bool) -> None:
        request = self.requests[index] if keep else self.requests.pop(index)
        if isinstance(request, PutRequest):
            answer = self.server.put(request.seq, request.data, request.eof)
            self.answers.append(("put", answer.status, put_headers(answer), b""))
        else:
            status, headers, body = get_response(self.server.get(request.ack, request.size))
            self.answers.append(("get", status, headers, body))

    def answer(self, index: int, keep: bool) -> None:
        kind, status, headers, body = self.answers[index] if keep else self.answers.pop(index)
        if kind == "put":
            self.client.on_put_answer(status, headers)
        else:
            self.client.on_get_answer(status, headers, body)

    def server_read(self, n: int) -> None:
        data = self.server.app_read(n)
        if data:
            self.up_read += data

    def client_read(self, n: int) -> None:
        self.down_read += self.client.inbox.read(n)

    def check(self) -> None:
        assert bytes(self.up_read) == bytes(self.up_written[: len(self.up_read)])
        assert bytes(self.down_read) == bytes(self.down_written[: len(self.down_read)])
        assert not self.client.reset and not self.server.aborted

    def settle(self) -> None:
        """A network that now behaves: every request answered, every answer delivered."""
        self.requests.clear()
        self.answers.clear()
        for _ in range(10_000):
            progress = False
            if self.send_put():
                self.deliver(0, keep=False)
                self.answer(0, keep=False)
                progress = True
            if self.send_get():
                self.deliver(0, keep=False)
                _, status, headers, body = self.answers.pop(0)
                progress |= self.client.on_get_answer(status, headers, body) > 0
                progress |= status == 200 and self.client.inbox.eof
            before = len(self.up_read), len(self.down_read)
            self.server_read(10_000)
            self.client_read(10_000)
            progress |= (len(self.up_read), len(self.down_read)) != before
            self.check()
            if not progress:
                return
        raise AssertionError("no quiescence")


ACTIONS = st.one_of(
    st.tuples(st.sampled_from(["cwrite", "swrite", "sread", "cread"]), st.integers(1, 80)),
    st.tuples(st.sampled_from(["cput", "cget", "ceof", "seof"]), st.just(0)),
    st.tuples(st.sampled_from(["deliver", "dup_req", "drop_req"]), st.integers(0, 50)),
    st.tuples(st.sampled_from(["answer", "dup_ans", "drop_ans"]), st.integers(0, 50)),
)


@settings(max_examples=400, deadline=None)
@given(
    sizes=st.tuples(*(st.integers(1, 64) for _ in range(4))),
    actions=st.lists(ACTIONS, max_size=120),
    eof=st.booleans(),
)
def test_no_byte_lost_or_doubled(
    sizes: tuple[int, int, int, int], actions: list[tuple[str, int]], eof: bool
) -> None:
    max_put, max_get, inbox, outbox = sizes
    world = World(Limits(max_put=max_put, max_get=max_get, inbox=inbox, outbox=outbox))
    for action, n in actions:
        if action == "cwrite":
            world.client_write(n)
        elif action == "swrite":
            world.server_write(n)
        elif action == "sread":
            world.server_read(n)
        elif action == "cread":
            world.client_read(n)
        elif action == "cput":
            world.send_put()
        elif action == "cget":
            world.send_get()
        elif action == "ceof":
            world.client_eof_now()
        elif action == "seof":
            world.server_eof_now()
        elif action in ("deliver", "dup_req", "drop_req") and world.requests:
            index = n % len(world.requests)
            if action == "drop_req":
                world.requests.pop(index)
            else:
                world.deliver(index, keep=action == "dup_req")
        elif action in ("answer", "dup_ans", "drop_ans") and world.answers:
            index = n % len(world.answers)
            if action == "drop_ans":
                world.answers.pop(index)
            else:
                world.answer(index, keep=action == "dup_ans")
        world.check()
    if eof:
        world.client_eof_now()
        world.server_eof_now()
    world.settle()
    assert bytes(world.up_read) == bytes(world.up_written)
    assert bytes(world.down_read) == bytes(world.down_written)
    if eof:
        assert world.server.app_read(1) == b""  # the client's EOF arrived, after every byte
        assert world.client.inbox.eof and not world.client.inbox.buf
        assert world.client.outbox.eof_acked
        assert world.client.next_put() is None and world.client.next_get() is None


@given(st.binary(max_size=40), st.integers(0, 60), st.integers(0, 60))
def test_inbox_takes_each_offset_once(data: bytes, cut: int, room: int) -> None:
    """Two overlapping pieces of one stream, either order: the bytes come out once, in order."""
    inbox = Inbox()
    first = inbox.apply(0, data[:cut], False, room)
    assert first.taken == min(len(data[:cut]), room)
    second = inbox.apply(0, data, True, 1000)
    assert bytes(inbox.buf) == data
    assert second.ack == len(data) and inbox.eof
    again = inbox.apply(0, data, True, 1000)
    assert again.taken == 0 and not again.beyond_eof and bytes(inbox.buf) == data


def test_gap_is_refused_and_bytes_past_eof_are_bad() -> None:
    session = ServerSession("t", b"b", Limits(), 0.0)
    assert session.put(5, b"abc", False).status == 409  # ahead: resend from the ack
    assert session.put(0, b"abc", True) == PutAnswer(204, 3, True, taken=3)
    assert session.put(0, b"abc", True).status == 204  # the same retried: no error
    assert session.put(3, b"d", False).status == 400  # past the EOF
    assert session.put(None, b"", False).status == 400
    assert session.app_read(10) == b"abc" and session.app_read(10) == b""


def test_get_holds_until_data_and_keeps_bytes_until_acknowledged() -> None:
    session = ServerSession("t", b"b", Limits(), 0.0)
    assert session.get(0, 10) is None  # nothing yet: held
    session.app_write(b"hello")
    assert session.get(0, 3) == GetAnswer(200, 0, b"hel")
    assert session.get(0, 10) == GetAnswer(200, 0, b"hello")  # the answer was lost: again
    assert session.get(3, 10) == GetAnswer(200, 3, b"lo")
    assert session.get(2, 10) is not None and session.get(2, 10).status == 409  # overtaken
    assert session.get(9, 10) is not None and session.get(9, 10).status == 400  # never sent
    session.app_eof()
    assert session.get(5, 10) == GetAnswer(200, 5, b"", True)


def test_reset_reaches_both_sides() -> None:
    session = ServerSession("t", b"b", Limits(), 0.0)
    session.put(0, b"abc", False)
    session.delete(reset=False)  # DELETE before the client's EOF is an abort
    assert session.put(3, b"x", False).status == 410
    try:
        session.app_read(1)
    except ConnectionResetError:
        pass
    else:
        raise AssertionError("the application did not see the reset")
    client = ClientSession(Limits())
    client.on_get_answer(410, {}, b"")
    assert client.reset and client.next_get() is None and client.next_put() is None


def test_application_close_then_new_bytes_reset() -> None:
    session = ServerSession("t", b"b", Limits(), 0.0)
    session.put(0, b"abc", False)
    session.app_close()
    assert session.put(0, b"abc", False).status == 204  # a retry of what it had: harmless
    assert session.put(3, b"d", False).status == 410  # new bytes nobody will read


def test_table_binds_tokens_caps_and_expires() -> None:
    limits = Limits(poll_timeout=1.0, idle_timeout=5.0)
    table = SessionTable(limits, max_sessions=2)
    mine = binding("10.0.0.1", "Bearer x")
    first = table.create(mine, 0.0)
    assert first is not None and len(first.token) >= 43  # 256 bits, base64url
    second = table.create(mine, 0.0)
    assert second is not None and second.token != first.token
    assert table.create(mine, 0.0) is None  # the cap
    assert table.find(first.token, mine, 1.0) is first
    assert table.find(first.token, binding("10.0.0.2", "Bearer x"), 1.0) is None
    assert table.find(first.token, binding("10.0.0.1", "Bearer y"), 1.0) is None
    # One character changed (never to itself: a token may already end in "A").
    altered = first.token[:-1] + ("B" if first.token.endswith("A") else "A")
    assert table.find(altered, mine, 1.0) is None
    keyed = binding("10.0.0.1", "Bearer x", "client-secret")
    assert keyed != mine and keyed != binding("10.0.0.1", "Bearer x", "other-secret")
    first.begin(2.0)  # a request in flight keeps it alive past the idle timeout
    assert table.find(first.token, mine, 20.0) is first
    first.end(20.0)
    reset = table.sweep(30.0)
    assert {id(s) for s in reset} == {id(first), id(second)}
    assert first.aborted and table.find(first.token, mine, 30.5) is first  # 410 for a while
    assert table.find(first.token, mine, 40.0) is None
    assert table.create(mine, 40.0) is not None


@given(st.text(max_size=30))
def test_offsets_are_plain_decimals(text: str) -> None:
    value = parse_offset(text)
    if value is not None:
        assert text.strip().isdigit() and value == int(text.strip())
    assert parse_offset("1" * 21) is None and parse_offset("-1") is None


def test_http_and_https_router_addresses_pick_httpsock() -> None:
    from ptth.proto.address import parse_router_address

    plain = parse_router_address("http://127.0.0.1:8888")
    assert (plain.transport, plain.tls, plain.target) == (
        "httpsock",
        False,
        "/.well-known/ptth/socket",
    )
    secure = parse_router_address("HTTPS://Router.Example:443/edge/socket")
    assert (secure.transport, secure.tls, secure.host, secure.target) == (
        "httpsock",
        True,
        "router.example",
        "/edge/socket",
    )
    assert parse_router_address(str(secure)) == secure


HEADER_NAMES = ["x-seq", "x-ack", "x-eof", "x-reset", "x-content-length", "authorization"]


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(["POST", "PUT", "GET", "DELETE", "HEAD", "put", "OPTIONS"]),
            st.sampled_from(["", "/", "/TOKEN", "/TOKEN/", "/TOKEN/x", "/../TOKEN"])
            | st.text(max_size=20),
            st.dictionaries(
                st.sampled_from(HEADER_NAMES),
                st.sampled_from(["0", "1", "-1", "5", "99999999999999999999999", "", "x"])
                | st.text(max_size=8),
                max_size=6,
            ),
            st.binary(max_size=64),
        ),
        max_size=12,
    )
)
def test_any_request_gets_an_answer_never_an_exception(
    requests: list[tuple[str, str, dict[str, str], bytes]],
) -> None:
    """Whatever a peer sends, the listener answers with a status and no-store (rule: nothing a
    peer sends may end the router)."""
    import trio

    from ptth.httpsock import Listener, Request

    async def main() -> None:
        listener = Listener(limits=Limits(poll_timeout=0.01, idle_timeout=0.05), max_sessions=3)
        token = "none"
        for method, path, headers, body in requests:
            request = Request(method, path.replace("TOKEN", token), headers, ("1.2.3.4", 5), body)
            admitted = listener.admit(request, len(body))
            response = admitted if not isinstance(admitted, int) else None
            if response is None:
                response = await listener.respond(request)
                listener.release(admitted)
            assert 200 <= response.status < 600
            assert ("cache-control", "no-store") in response.headers
            if response.status == 201:
                token = dict(response.headers)["x-session"]
        await listener.aclose()

    trio.run(main)


def test_per_client_cap() -> None:
    table = SessionTable(Limits(), max_sessions=10, max_per_client=2)
    sessions = [table.create(b"b", 0.0, "10.0.0.1") for _ in range(3)]
    assert sessions[0] is not None and sessions[1] is not None and sessions[2] is None
    assert table.create(b"b", 0.0, "10.0.0.2") is not None  # another address
    first = sessions[0]
    first.delete(reset=True)
    table.forget(first)
    assert table.create(b"b", 0.0, "10.0.0.1") is not None  # its place is free again


def test_a_closed_session_nobody_fetches_expires_after_a_poll() -> None:
    session = ServerSession("t", b"b", Limits(poll_timeout=1.0, idle_timeout=10.0), 0.0)
    assert not session.expired(5.0)
    session.app_close()
    assert session.expired(1.5) and session.deadline() == 1.0


def test_a_listener_never_used_leaves_nothing_unclosed() -> None:
    """A router built and dropped without serving (config checks, tests) makes no stream."""
    import gc
    import warnings

    from ptth.httpsock import Listener

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        listener = Listener()
        del listener
        gc.collect()
