"""msgpack-RPC framing (https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md).

request      [0, msgid, method, params]
response     [1, msgid, error, result]      error = {"code": str, "message": str} or nil
notification [2, method, params]            the daemon sends "progress" notifications

The stream is decoded with msgpack.Unpacker: no message may exceed max_buffer_size, strings
must be valid UTF-8 (raw=False) and map keys must be strings. A malformed stream cannot be
resynchronised: the daemon answers with msgid nil and closes that connection only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from stord.errors import BadRequest, LimitExceeded, StordError

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MAX_MSGID = (1 << 32) - 1


class ProtocolError(BadRequest):
    """Bytes that are not a msgpack-RPC message; the connection is closed after the reply."""

    code = "protocol_error"


class UnknownMethod(BadRequest):
    code = "unknown_method"


class RequestTooLarge(LimitExceeded):
    code = "request_too_large"


@dataclass(frozen=True)
class Message:
    kind: int                   # REQUEST or NOTIFICATION
    msgid: int | None           # None for notifications
    method: str
    params: list[Any]


class InvalidMessage(StordError):
    """A well-formed msgpack object that is not a valid request; msgid kept when known."""

    code = "bad_request"

    def __init__(self, message: str, msgid: int | None) -> None:
        super().__init__(message)
        self.msgid = msgid


def make_unpacker(max_bytes: int) -> msgpack.Unpacker:
    # max_buffer_size bounds one message (and every str/bin/array/map length with it);
    # strict_map_key refuses non-string keys, raw=False refuses invalid UTF-8 strings.
    return msgpack.Unpacker(max_buffer_size=max_bytes, raw=False, strict_map_key=True,
                            use_list=True)


def parse(obj: Any) -> Message:
    """Check one decoded object against the msgpack-RPC message shapes."""
    if not isinstance(obj, list) or not obj:
        raise InvalidMessage("a message must be a msgpack array [type, ...]", None)
    kind = obj[0]
    if kind == REQUEST:
        msgid = obj[1] if len(obj) > 1 else None
        if not isinstance(msgid, int) or isinstance(msgid, bool) or not 0 <= msgid <= MAX_MSGID:
            raise InvalidMessage("a request's msgid must be an integer in [0, 2^32)", None)
        if len(obj) != 4:
            raise InvalidMessage("a request must be [0, msgid, method, params]", msgid)
        _, _, method, params = obj
        if not isinstance(method, str):
            raise InvalidMessage("method must be a string", msgid)
        if not isinstance(params, list):
            raise InvalidMessage("params must be an array", msgid)
        return Message(REQUEST, msgid, method, params)
    if kind == NOTIFICATION:
        if len(obj) != 3 or not isinstance(obj[1], str) or not isinstance(obj[2], list):
            raise InvalidMessage("a notification must be [2, method, params]", None)
        return Message(NOTIFICATION, None, obj[1], obj[2])
    raise InvalidMessage(f"message type must be 0 (request) or 2 (notification), not {kind!r}",
                         None)


def pack_response(msgid: int | None, error: dict[str, str] | None, result: Any) -> bytes:
    return msgpack.packb([RESPONSE, msgid, error, result], use_bin_type=True)


def pack_notification(method: str, params: list[Any]) -> bytes:
    return msgpack.packb([NOTIFICATION, method, params], use_bin_type=True)


def pack_request(msgid: int, method: str, params: list[Any]) -> bytes:
    return msgpack.packb([REQUEST, msgid, method, params], use_bin_type=True)


def one_map(params: list[Any], method: str) -> dict[str, Any]:
    """Every stord method takes no argument or one map."""
    if not params:
        return {}
    if len(params) != 1 or not isinstance(params[0], dict):
        raise BadRequest(f"{method} takes one map argument")
    return params[0]
