"""Daemon configuration: a TOML file (docs/stord.toml.example) or the built-in defaults.

With no file, stord serves the current directory read-only as export "." on
127.0.0.1:7411 with no tenants (anyone who can reach loopback may read it).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stord.errors import BadRequest

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7411


class ConfigError(BadRequest):
    """A configuration file that stord refuses to start with."""

    code = "config_error"


@dataclass(frozen=True)
class Limits:
    max_concurrent_queries: int = 64      # queries holding workers at once; more wait in line
    max_queued_queries: int = 1024        # beyond that a query is refused (limit_exceeded)
    query_cpu_seconds: float = 60.0       # CPU time of one range in a worker; the worker is killed
    query_wall_seconds: float = 600.0     # a whole query, queueing included
    instruction_budget: int = 1 << 32     # per program call (interp: instructions, jit: back-edges)
    max_program_bytes: int = 1 << 20      # ELF object or C source as sent
    max_program_insns: int = 1_000_000    # after loading (the kernel's own limit)
    max_map_bytes: int = 256 << 20        # keys + values of all maps a program declares
    max_worker_memory_bytes: int = 4 << 30  # anonymous RSS of a worker (not the mmapped file)
    max_result_bytes: int = 1 << 20       # the packed reply of one query
    max_request_bytes: int = 4 << 20      # one msgpack-RPC message (program included)
    max_connections: int = 1024
    idle_seconds: float = 300.0           # a connection with nothing in flight is closed after


@dataclass(frozen=True)
class Tenant:
    name: str
    token_sha256: str                     # only a hash of the token is kept in memory
    exports: tuple[str, ...]              # export names this tenant may read ("*" = all)

    def may_read(self, export: str) -> bool:
        return "*" in self.exports or export in self.exports


@dataclass(frozen=True)
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    exports: dict[str, Path] = field(default_factory=dict)
    default_export: str | None = None     # export used for paths that name no export
    tenants: tuple[Tenant, ...] = ()      # empty = no authentication
    workers: int = 0                      # worker processes; 0 = one per core
    split_bytes: int = 16 << 20           # files above this are split into ranges over workers
    range_bytes: int = 64 << 20           # upper bound on one range (progress granularity)
    engine: str | None = None             # default engine; None = stord.engines.base.default_engine()
    require_kernel_verifier: bool = False # every program must pass the kernel verifier first
    shutdown_grace_seconds: float = 10.0  # SIGTERM: in-flight queries get this long to finish
    log_format: str = "json"              # "json" (one object per line) or "kv" (key=value)
    limits: Limits = field(default_factory=Limits)

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def tenant_for(self, token: str | None) -> Tenant | None:
        """The tenant owning `token`; None when the token is unknown."""
        if token is None:
            return None
        digest = hash_token(token)
        for t in self.tenants:
            # compare_digest: the comparison time says nothing about how much matched
            if _compare(t.token_sha256, digest):
                return t
        return None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _compare(a: str, b: str) -> bool:
    import hmac
    return hmac.compare_digest(a.encode(), b.encode())


def default_config(cwd: Path | None = None) -> Config:
    root = (cwd or Path.cwd()).resolve()
    return Config(exports={".": root}, default_export=".")


_TOP_KEYS = {"listen", "exports", "default_export", "tenants", "workers", "split_bytes",
             "range_bytes", "engine", "require_kernel_verifier", "shutdown_grace_seconds",
             "log_format", "limits"}


def load_config(path: str | Path | None) -> Config:
    """Read a TOML config; unknown keys are errors (a typo must not silently do nothing)."""
    if path is None:
        return default_config()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {p} is not valid TOML: {e}") from e
    return parse_config(raw, base=p.parent)


def parse_config(raw: dict[str, Any], base: Path | None = None) -> Config:
    base = (base or Path.cwd()).resolve()
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    host, port = parse_address(_get(raw, "listen", str, f"{DEFAULT_HOST}:{DEFAULT_PORT}"))

    exports: dict[str, Path] = {}
    for name, directory in _get(raw, "exports", dict, {".": "."}).items():
        if not isinstance(directory, str):
            raise ConfigError(f"exports.{name} must be a directory path string")
        if "/" in name or name in ("", ".."):
            raise ConfigError(f"export name {name!r} may not contain '/' or be empty or '..'")
        d = (base / directory).resolve()
        if not d.is_dir():
            raise ConfigError(f"export {name!r}: {d} is not a directory")
        exports[name] = d
    if not exports:
        raise ConfigError("no exports configured")
    default = _get(raw, "default_export", str, next(iter(exports)) if len(exports) == 1 else "")
    if default and default not in exports:
        raise ConfigError(f"default_export {default!r} is not an export")

    tenants: list[Tenant] = []
    for name, t in _get(raw, "tenants", dict, {}).items():
        if not isinstance(t, dict):
            raise ConfigError(f"tenants.{name} must be a table")
        bad = set(t) - {"token", "token_sha256", "exports"}
        if bad:
            raise ConfigError(f"tenants.{name}: unknown keys {', '.join(sorted(bad))}")
        if ("token" in t) == ("token_sha256" in t):
            raise ConfigError(f"tenants.{name}: give exactly one of token, token_sha256")
        digest = hash_token(str(t["token"])) if "token" in t else str(t["token_sha256"]).lower()
        ex = t.get("exports", ["*"])
        if not isinstance(ex, list) or not all(isinstance(e, str) for e in ex):
            raise ConfigError(f"tenants.{name}.exports must be a list of export names")
        for e in ex:
            if e != "*" and e not in exports:
                raise ConfigError(f"tenants.{name}: export {e!r} is not configured")
        tenants.append(Tenant(name, digest, tuple(ex)))

    lim_raw = _get(raw, "limits", dict, {})
    fields = Limits.__dataclass_fields__
    bad = set(lim_raw) - set(fields)
    if bad:
        raise ConfigError(f"unknown limits: {', '.join(sorted(bad))}")
    lim_vals: dict[str, Any] = {}
    for k, v in lim_raw.items():
        want = float if fields[k].type == "float" else int
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise ConfigError(f"limits.{k} must be a positive number")
        lim_vals[k] = want(v)

    log_format = _get(raw, "log_format", str, "json")
    if log_format not in ("json", "kv"):
        raise ConfigError("log_format must be 'json' or 'kv'")
    return Config(
        host=host, port=port, exports=exports, default_export=default or None,
        tenants=tuple(tenants),
        workers=_get(raw, "workers", int, 0),
        split_bytes=_get(raw, "split_bytes", int, Config.split_bytes),
        range_bytes=_get(raw, "range_bytes", int, Config.range_bytes),
        engine=_get(raw, "engine", str, "") or None,
        require_kernel_verifier=_get(raw, "require_kernel_verifier", bool, False),
        shutdown_grace_seconds=float(_get(raw, "shutdown_grace_seconds", (int, float), 10.0)),
        log_format=log_format,
        limits=Limits(**lim_vals),
    )


def parse_address(addr: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """"host:port", "host", ":port" or "[v6]:port" -> (host, port)."""
    host, port = addr, default_port
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ConfigError(f"bad address {addr!r}")
        host, rest = addr[1:end], addr[end + 1:]
        if rest.startswith(":"):
            port = _port(rest[1:], addr)
    elif addr.count(":") == 1:
        h, p = addr.split(":")
        host, port = h or DEFAULT_HOST, _port(p, addr)
    return host, port


def _port(p: str, addr: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise ConfigError(f"bad port in address {addr!r}")
    return int(p)


def _get(raw: dict[str, Any], key: str, typ: Any, default: Any) -> Any:
    v = raw.get(key, default)
    if isinstance(v, bool) and typ is not bool:
        raise ConfigError(f"{key} has the wrong type")
    if not isinstance(v, typ):
        raise ConfigError(f"{key} must be of type {getattr(typ, '__name__', typ)}")
    return v
