"""Userspace BPF maps with the kernel's semantics and return codes.

Every map keeps its values in one bytearray of max_entries * value_size bytes: the map's
virtual region at `map_base(index)`. Array element i lives at i * value_size; a hash
element keeps the slot it got on insertion until it is deleted, so a pointer returned by
map_lookup_elem stays valid (as with the kernel's preallocated hash maps). Per-CPU maps
behave as their plain kind on one CPU.
"""

from __future__ import annotations

import errno

from stord.errors import LoadError
from stord.program.model import MAP_ARRAY, MAP_HASH, MAP_PERCPU_ARRAY, MAP_PERCPU_HASH, MapDef

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_LOCK = 4

# Negative errno values returned by the map helpers (as the kernel's).
EPERM, ENOENT, E2BIG, EFAULT, EEXIST, EINVAL = (
    -errno.EPERM, -errno.ENOENT, -errno.E2BIG, -errno.EFAULT, -errno.EEXIST, -errno.EINVAL)

MAX_MAP_BYTES = 1 << 30  # refuse maps whose value storage would exceed 1 GiB


class Map:
    """A map's values plus the key -> slot directory of its kind."""

    def __init__(self, index: int, mdef: MapDef) -> None:
        self.index = index
        self.mdef = mdef
        if mdef.value_size <= 0 or mdef.max_entries <= 0 or mdef.key_size <= 0:
            raise LoadError(f"map {mdef.name!r}: key/value sizes and max_entries must be > 0")
        size = mdef.value_size * mdef.max_entries
        if size > MAX_MAP_BYTES:
            raise LoadError(f"map {mdef.name!r} needs {size} bytes of values (limit {MAX_MAP_BYTES})")
        self.value_size = mdef.value_size
        self.key_size = mdef.key_size
        self.values = bytearray(size)
        # .rodata is frozen: the program may read it but neither store to it nor update it.
        self.readonly = mdef.readonly or mdef.name.startswith(".rodata")

    def lookup(self, key: bytes) -> int | None:
        """Slot of key, or None."""
        raise NotImplementedError

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        raise NotImplementedError

    def delete(self, key: bytes) -> int:
        raise NotImplementedError

    def items(self) -> dict[bytes, bytes]:
        raise NotImplementedError

    def value(self, slot: int) -> bytes:
        vs = self.value_size
        return bytes(self.values[slot * vs:(slot + 1) * vs])


class ArrayMap(Map):
    """BPF_MAP_TYPE_ARRAY / PERCPU_ARRAY (and global data sections, 1 entry)."""

    def __init__(self, index: int, mdef: MapDef) -> None:
        super().__init__(index, mdef)
        if mdef.key_size != 4:
            raise LoadError(f"array map {mdef.name!r} must have 4-byte keys, not {mdef.key_size}")
        if mdef.initial:
            if len(mdef.initial) > len(self.values):
                raise LoadError(f"map {mdef.name!r}: initial data larger than its value")
            self.values[:len(mdef.initial)] = mdef.initial

    def lookup(self, key: bytes) -> int | None:
        i = int.from_bytes(key, "little")
        return i if i < self.mdef.max_entries else None

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        if self.readonly:
            return EPERM
        if flags & ~BPF_F_LOCK > BPF_EXIST:
            return EINVAL
        i = int.from_bytes(key, "little")
        if i >= self.mdef.max_entries:
            return E2BIG
        if flags & BPF_NOEXIST:
            return EEXIST  # array elements always exist
        vs = self.value_size
        self.values[i * vs:(i + 1) * vs] = value
        return 0

    def delete(self, key: bytes) -> int:
        return EINVAL  # array elements cannot be deleted

    def items(self) -> dict[bytes, bytes]:
        ks = self.key_size
        return {i.to_bytes(ks, "little"): self.value(i) for i in range(self.mdef.max_entries)}


class HashMap(Map):
    """BPF_MAP_TYPE_HASH / PERCPU_HASH, bounded by max_entries."""

    def __init__(self, index: int, mdef: MapDef) -> None:
        super().__init__(index, mdef)
        self.slots: dict[bytes, int] = {}
        self.free = list(range(mdef.max_entries - 1, -1, -1))  # pop() hands out slot 0 first

    def lookup(self, key: bytes) -> int | None:
        return self.slots.get(key)

    def update(self, key: bytes, value: bytes, flags: int) -> int:
        if flags & ~BPF_F_LOCK > BPF_EXIST:
            return EINVAL
        slot = self.slots.get(key)
        if slot is None:
            if flags & BPF_EXIST:
                return ENOENT
            if not self.free:
                return E2BIG
            slot = self.free.pop()
            self.slots[key] = slot
        elif flags & BPF_NOEXIST:
            return EEXIST
        vs = self.value_size
        self.values[slot * vs:(slot + 1) * vs] = value
        return 0

    def delete(self, key: bytes) -> int:
        slot = self.slots.pop(key, None)
        if slot is None:
            return ENOENT
        self.free.append(slot)
        return 0

    def items(self) -> dict[bytes, bytes]:
        return {k: self.value(s) for k, s in self.slots.items()}


def make_map(index: int, mdef: MapDef) -> Map:
    if mdef.type in (MAP_ARRAY, MAP_PERCPU_ARRAY) or mdef.is_global_data:
        return ArrayMap(index, mdef)
    if mdef.type in (MAP_HASH, MAP_PERCPU_HASH):
        return HashMap(index, mdef)
    raise LoadError(f"map {mdef.name!r}: map type {mdef.type} is not supported "
                    f"(hash, array, percpu hash/array)")
