"""The wire protocol, spoken by an independent msgpack-RPC client written here (raw socket +
msgpack, not the SDK): framing, pipelining, and every kind of bad input, after which the
daemon must still serve."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
from conftest import ALICE, HUGE_BUDGET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import RUNAWAY

import stord
from stord.engines.base import ENGINES


class RawRPC:
    """Minimal msgpack-RPC client: the spec's three message types, nothing from stord."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.next_id = 100

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, obj: object) -> None:
        self.sock.sendall(msgpack.packb(obj, use_bin_type=True))

    def recv(self) -> object:
        while True:
            for msg in self.unpacker:
                return msg
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.unpacker.feed(data)

    def call(self, method: str, *params: object) -> list:
        self.next_id += 1
        self.send([0, self.next_id, method, list(params)])
        while True:
            msg = self.recv()
            assert isinstance(msg, list)
            if msg[0] == 1:
                assert msg[1] == self.next_id
                return msg

    def closed_by_peer(self) -> bool:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def rpc(daemon):
    c = RawRPC(daemon.address)
    yield c
    c.close()


def still_serving(daemon) -> None:
    c = RawRPC(daemon.address)
    try:
        msg = c.call("ping")
        assert msg[2] is None and msg[3]["version"] == stord.__version__
    finally:
        c.close()


def test_ping_from_independent_client(rpc):
    msg = rpc.call("ping")
    assert msg[0] == 1 and msg[2] is None
    res = msg[3]
    assert res["version"] == stord.__version__
    assert set(res["engines"]) == set(ENGINES)
    assert all(v is None or isinstance(v, str) for v in res["engines"].values())


def test_pipelined_requests_answered_by_msgid(rpc):
    # Three requests in one write: every reply carries its own msgid.
    batch = b"".join(msgpack.packb([0, i, m, []]) for i, m in ((7, "ping"), (8, "nope"),
                                                               (9, "ping")))
    rpc.send_raw(batch)
    replies = {}
    for _ in range(3):
        msg = rpc.recv()
        replies[msg[1]] = msg
    assert replies[7][2] is None and replies[9][2] is None
    assert replies[8][2]["code"] == "unknown_method"


def test_unknown_method_keeps_connection(rpc):
    msg = rpc.call("format_disk", {"now": True})
    assert msg[2]["code"] == "unknown_method"
    assert "format_disk" in msg[2]["message"]
    assert rpc.call("ping")[2] is None


@pytest.mark.parametrize("message, code", [
    ([0, "x", "ping", []], "bad_request"),            # msgid not an integer
    ([0, -1, "ping", []], "bad_request"),             # msgid out of range
    ([0, 1, 42, []], "bad_request"),                  # method not a string
    ([0, 1, "ping", {"a": 1}], "bad_request"),        # params not an array
    ([0, 1, "ping"], "bad_request"),                  # too short
    ([5, 1, "ping", []], "bad_request"),              # unknown message type
    ({"method": "ping"}, "bad_request"),              # not an array at all
    ([0, 1, "stat", [1, 2]], "bad_request"),          # two positional params
    ([0, 1, "stat", [{"path": 5, "token": "x"}]], None),
    ([0, 1, "query", [{"path": "data/sensors.csv", "program": 12}]], None),
    ([0, 1, "query", [{"path": "data/sensors.csv", "program": "count", "params": [1]}]], None),
    ([0, 1, "query", [{"path": "data/sensors.csv", "program": "count", "range": "x"}]], None),
    ([0, 1, "query", [{"path": "data/sensors.csv", "program": "count", "bogus": 1}]], None),
])
def test_wrong_types_get_clear_errors(rpc, daemon, message, code):
    rpc.send(message)
    msg = rpc.recv()
    assert msg[0] == 1
    err = msg[2]
    assert isinstance(err, dict) and set(err) == {"code", "message"}
    assert err["message"] and "\n" not in err["message"]
    if code is not None:
        assert err["code"] == code
    else:  # unauthenticated wrong-type query: either is a clear refusal
        assert err["code"] in ("bad_request", "access_denied")
    # the stream is still in sync: the same connection keeps working
    assert rpc.call("ping")[2] is None


@pytest.mark.parametrize("garbage", [
    b"\xc1",                                    # a reserved msgpack byte
    b"\x94\x00\x01\xa4pi\xff\xff\x90",          # invalid UTF-8 in the method name
    msgpack.packb([0, 1, "stat", [{1: "x"}]]),  # a non-string map key
    b"\xdd\xff\xff\xff\xff",                    # an array claiming 4 G elements
])
def test_malformed_msgpack_closes_only_that_connection(rpc, daemon, garbage):
    rpc.send_raw(garbage)
    msg = rpc.recv()
    assert msg[0] == 1 and msg[1] is None
    assert msg[2]["code"] in ("protocol_error", "request_too_large")
    assert rpc.closed_by_peer()
    still_serving(daemon)


def test_oversized_request_refused(rpc, daemon):
    # The daemon's max_request_bytes default is 4 MiB: send a 5 MiB bin in one message.
    blob = msgpack.packb([0, 1, "ping", [b"x" * (5 << 20)]], use_bin_type=True)
    try:
        rpc.send_raw(blob)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon may hang up before reading it all
    msg = rpc.recv()
    assert msg[2]["code"] == "request_too_large"
    assert "4194304" in msg[2]["message"]
    still_serving(daemon)


def test_partial_frames_are_reassembled(rpc):
    data = msgpack.packb([0, 77, "ping", []])
    for i in range(len(data)):
        rpc.send_raw(data[i:i + 1])
    msg = rpc.recv()
    assert msg[1] == 77 and msg[2] is None


def test_client_notification_gets_no_reply(rpc):
    rpc.send([2, "cancel", [{"msgid": 12345}]])
    rpc.send([2, "no_such_method", []])
    # the next thing on the wire is the ping's reply, not an answer to the notifications
    msg = rpc.call("ping")
    assert msg[2] is None


def test_stats_over_raw_rpc(rpc):
    msg = rpc.call("stats", {"token": "alice-token-0123456789"})
    assert msg[2] is None
    s = msg[3]
    for k in ("cpu_percent", "daemon_rss", "workers_rss", "queries_served", "bytes_scanned",
              "bytes_returned", "worker_pids"):
        assert k in s
    assert s["daemon_rss"] > 0 and s["workers_rss"] > 0 and len(s["worker_pids"]) == 2


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from([0, 1, 2, 3, -1]), msgid=msgpack_values,
       method=st.sampled_from(["ping", "list", "stat", "query", "cancel", "stats", "x"])
       | msgpack_values, params=msgpack_values)
def test_fuzzed_messages_never_break_the_daemon(daemon, kind, msgid, method, params):
    c = RawRPC(daemon.address)
    try:
        c.send([kind, msgid, method, params])
        c.send([0, 4242, "ping", []])
        # whatever the first message was, the ping behind it is answered
        for _ in range(3):
            msg = c.recv()
            assert isinstance(msg, list) and msg[0] == 1
            if msg[2] is not None:
                assert set(msg[2]) == {"code", "message"}
            if msg[1] == 4242 and msg[2] is None:  # (a fuzzed request may use 4242 too)
                break
        else:
            pytest.fail("no reply to the ping")
    finally:
        c.close()


def test_length_prefixed_garbage_does_not_hang(daemon):
    # bytes that could never be a msgpack message start (a fixext with a random body)
    c = RawRPC(daemon.address)
    try:
        c.send_raw(struct.pack(">BBQ", 0xd7, 0x01, 0))  # fixext 8: not a message
        msg = c.recv()
        assert msg[0] == 1 and msg[2]["code"] in ("bad_request", "protocol_error")
    finally:
        c.close()
    still_serving(daemon)


def test_idle_half_sent_connection_is_closed(daemon_factory):
    d = daemon_factory("idle", limits="idle_seconds = 1")
    c = RawRPC(d.address)
    try:
        c.send_raw(msgpack.packb([0, 1, "ping", []])[:3])  # a request that never completes
        assert c.closed_by_peer()
    finally:
        c.close()
    still_serving(d)
    assert any(r["event"] == "idle_close" for r in d.log_lines())


def test_cancel_request_by_msgid(daemon_factory, engine):
    d = daemon_factory("rawcancel", limits="query_cpu_seconds = 120", budget=HUGE_BUDGET)
    c = RawRPC(d.address)
    try:
        c.send([0, 1, "query", [{"path": "data/sensors.csv", "program": RUNAWAY,
                                 "engine": engine, "token": ALICE}]])
        busy = []
        while not busy:
            busy = c.call("stats", {"token": ALICE})[3]["busy_pids"]
        c.send([0, 2, "cancel", [{"msgid": 1, "token": ALICE}]])
        replies = {}
        while len(replies) < 2:
            msg = c.recv()
            replies[msg[1]] = msg
        assert replies[2][2] is None and replies[2][3] is True
        assert replies[1][2]["code"] == "cancelled"
        # cancelling what is not running says so
        assert c.call("cancel", {"msgid": 1, "token": ALICE})[3] is False
    finally:
        c.close()
