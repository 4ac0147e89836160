"""A program's state after a range: raw bytes, decoded through BTF, merged by reduce."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class State:
    """Raw contents of global data sections (by section name) and of BTF-defined maps."""

    globals: dict[str, bytes] = field(default_factory=dict)
    maps: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
