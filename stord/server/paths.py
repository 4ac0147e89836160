"""Mapping a client's path to a file inside an export, and who may read it.

A client names files as "export/rel/path", or "rel/path" inside the default export. A path
never leaves its export: absolute paths and ".." are refused outright, and the resolved path
(symlinks followed) must still lie under the export's real directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stord.errors import AccessDenied, BadRequest, NotFound
from stord.server.config import Config, Tenant


@dataclass(frozen=True)
class Resolved:
    export: str
    rel: str          # path inside the export, "" for its root
    path: Path        # real path on disk

    @property
    def display(self) -> str:
        return f"{self.export}/{self.rel}" if self.rel else self.export


def authenticate(config: Config, token: object) -> Tenant | None:
    """The caller's tenant; None when the daemon runs without tenants."""
    if not config.tenants:
        return None
    if token is None:
        raise AccessDenied("this daemon requires a token")
    if not isinstance(token, str):
        raise BadRequest("token must be a string")
    tenant = config.tenant_for(token)
    if tenant is None:
        raise AccessDenied("unknown token")
    return tenant


def resolve(config: Config, tenant: Tenant | None, path: object) -> Resolved:
    if not isinstance(path, str):
        raise BadRequest("path must be a string")
    if "\0" in path:
        raise BadRequest("path contains a NUL byte")
    if path.startswith("/"):
        raise AccessDenied(f"absolute paths are not allowed: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise AccessDenied(f"'..' is not allowed in paths: {path!r}")
    if parts and parts[0] in config.exports and parts[0] != ".":
        export, rest = parts[0], parts[1:]
    elif path in (".", "") or (parts and config.default_export is not None):
        if config.default_export is None:
            raise NotFound("no export given and this daemon has no default export")
        export, rest = config.default_export, parts
    else:
        raise NotFound(f"no such export in {path!r}")
    if tenant is not None and not tenant.may_read(export):
        raise AccessDenied(f"tenant {tenant.name!r} may not read export {export!r}")
    root = config.exports[export]
    candidate = root.joinpath(*rest)
    try:
        real = Path(os.path.realpath(candidate, strict=True))
    except FileNotFoundError as e:
        raise NotFound(f"no such file: {path}") from e
    except OSError as e:
        raise NotFound(f"cannot resolve {path}: {e.strerror}") from e
    if real != root and root not in real.parents:
        raise AccessDenied(f"{path!r} points outside its export")
    return Resolved(export, "/".join(rest), real)


def regular_file(r: Resolved) -> os.stat_result:
    try:
        st = os.stat(r.path)
    except OSError as e:
        raise NotFound(f"cannot stat {r.display}: {e.strerror}") from e
    import stat as st_mod
    if not st_mod.S_ISREG(st.st_mode):
        raise BadRequest(f"{r.display} is not a regular file")
    if not os.access(r.path, os.R_OK):
        raise AccessDenied(f"{r.display} is not readable by the daemon")
    return st
