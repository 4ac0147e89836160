"""stord client SDK: run filter/reduce programs on stord daemons, get aggregates back.

    from stord_client import Client, AsyncClient, query_many
    Client("127.0.0.1:7411", token=None).query("data/x.csv", "avg", column=2).value

`reduce.merge(a, b, spec)` merges two decoded states of one program (pure Python).
"""

from stord_client.aio import AsyncClient, query_many_async
from stord_client.client import (
    DEFAULT_ADDRESS,
    DEFAULT_PORT,
    Client,
    RemoteError,
    Result,
    query_many,
)

__all__ = ["AsyncClient", "Client", "DEFAULT_ADDRESS", "DEFAULT_PORT", "RemoteError", "Result",
           "query_many", "query_many_async"]
