"""A small ctypes layer over the bpf(2) system call: maps, BTF, programs, test runs.

Only the commands the kernel engine needs. Each attribute block is the kernel's
`union bpf_attr` member for that command (include/uapi/linux/bpf.h); the kernel accepts a
shorter block than its own union and zero-fills the rest, so these stay valid on newer
kernels. Failures raise `BpfError` (an OSError carrying errno and the command name).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import platform
from ctypes import c_char, c_uint32, c_uint64

# bpf_cmd
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
PROG_TEST_RUN = 10
BTF_LOAD = 18
MAP_FREEZE = 22
MAP_UPDATE_BATCH = 26
MAP_DELETE_BATCH = 27

_CMD_NAMES = {MAP_CREATE: "MAP_CREATE", MAP_LOOKUP_ELEM: "MAP_LOOKUP_ELEM",
              MAP_UPDATE_ELEM: "MAP_UPDATE_ELEM", MAP_DELETE_ELEM: "MAP_DELETE_ELEM",
              MAP_GET_NEXT_KEY: "MAP_GET_NEXT_KEY", PROG_LOAD: "PROG_LOAD",
              PROG_TEST_RUN: "PROG_TEST_RUN", BTF_LOAD: "BTF_LOAD", MAP_FREEZE: "MAP_FREEZE",
              MAP_UPDATE_BATCH: "MAP_UPDATE_BATCH", MAP_DELETE_BATCH: "MAP_DELETE_BATCH"}

PROG_TYPE_XDP = 6
F_RDONLY_PROG = 1 << 7      # map flag: the program may only read (.rodata)
ANY = 0                     # map update flag

LOG_LEVEL1 = 1
LOG_STATS = 4

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}


class BpfError(OSError):
    """bpf(2) failed; `.errno` is the kernel's error, `.cmd` the command name."""

    def __init__(self, err: int, cmd: str) -> None:
        super().__init__(err, f"bpf({cmd}): {os.strerror(err)}")
        self.cmd = cmd


class MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", c_uint32), ("key_size", c_uint32), ("value_size", c_uint32),
                ("max_entries", c_uint32), ("map_flags", c_uint32),
                ("inner_map_fd", c_uint32), ("numa_node", c_uint32),
                ("map_name", c_char * 16), ("map_ifindex", c_uint32), ("btf_fd", c_uint32),
                ("btf_key_type_id", c_uint32), ("btf_value_type_id", c_uint32),
                ("btf_vmlinux_value_type_id", c_uint32), ("map_extra", c_uint64)]


class MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", c_uint32), ("key", c_uint64), ("value", c_uint64),
                ("flags", c_uint64)]


class MapBatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", c_uint64), ("out_batch", c_uint64), ("keys", c_uint64),
                ("values", c_uint64), ("count", c_uint32), ("map_fd", c_uint32),
                ("elem_flags", c_uint64), ("flags", c_uint64)]


class MapFdAttr(ctypes.Structure):
    _fields_ = [("map_fd", c_uint32)]


class ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", c_uint32), ("insn_cnt", c_uint32), ("insns", c_uint64),
                ("license", c_uint64), ("log_level", c_uint32), ("log_size", c_uint32),
                ("log_buf", c_uint64), ("kern_version", c_uint32), ("prog_flags", c_uint32),
                ("prog_name", c_char * 16), ("prog_ifindex", c_uint32),
                ("expected_attach_type", c_uint32), ("prog_btf_fd", c_uint32),
                ("func_info_rec_size", c_uint32), ("func_info", c_uint64),
                ("func_info_cnt", c_uint32), ("line_info_rec_size", c_uint32),
                ("line_info", c_uint64), ("line_info_cnt", c_uint32),
                ("attach_btf_id", c_uint32), ("attach_prog_fd", c_uint32),
                ("core_relo_cnt", c_uint32), ("fd_array", c_uint64), ("core_relos", c_uint64),
                ("core_relo_rec_size", c_uint32), ("log_true_size", c_uint32)]


class TestRunAttr(ctypes.Structure):
    __test__ = False  # not a pytest class
    _fields_ = [("prog_fd", c_uint32), ("retval", c_uint32), ("data_size_in", c_uint32),
                ("data_size_out", c_uint32), ("data_in", c_uint64), ("data_out", c_uint64),
                ("repeat", c_uint32), ("duration", c_uint32), ("ctx_size_in", c_uint32),
                ("ctx_size_out", c_uint32), ("ctx_in", c_uint64), ("ctx_out", c_uint64),
                ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]


class BtfLoadAttr(ctypes.Structure):
    _fields_ = [("btf", c_uint64), ("btf_log_buf", c_uint64), ("btf_size", c_uint32),
                ("btf_log_size", c_uint32), ("btf_log_level", c_uint32),
                ("btf_log_true_size", c_uint32)]


class XdpMd(ctypes.Structure):
    _fields_ = [("data", c_uint32), ("data_end", c_uint32), ("data_meta", c_uint32),
                ("ingress_ifindex", c_uint32), ("rx_queue_index", c_uint32),
                ("egress_ifindex", c_uint32)]


class FuncInfo(ctypes.Structure):
    _fields_ = [("insn_off", c_uint32), ("type_id", c_uint32)]


class LineInfo(ctypes.Structure):
    _fields_ = [("insn_off", c_uint32), ("file_name_off", c_uint32), ("line_off", c_uint32),
                ("line_col", c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


_NR = _SYS_BPF.get(platform.machine())


def sys_bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); returns the result or raises BpfError."""
    if _NR is None:
        raise BpfError(errno_mod.ENOSYS, _CMD_NAMES.get(cmd, str(cmd)))
    while True:
        ret = _libc.syscall(_NR, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno_mod.EINTR:   # long verifications can be interrupted: retry
            raise BpfError(err, _CMD_NAMES.get(cmd, str(cmd)))


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def object_name(name: str) -> bytes:
    """The kernel allows [A-Za-z0-9_.] and 15 characters in map and program names."""
    clean = "".join(c if c.isascii() and (c.isalnum() or c in "_.") else "_" for c in name)
    return clean[:15].encode()


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, *,
               flags: int = 0, name: str = "", btf_fd: int = 0, btf_key_type_id: int = 0,
               btf_value_type_id: int = 0) -> int:
    attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                         max_entries=max_entries, map_flags=flags, map_name=object_name(name),
                         btf_fd=btf_fd, btf_key_type_id=btf_key_type_id,
                         btf_value_type_id=btf_value_type_id)
    return sys_bpf(MAP_CREATE, attr)


def map_update(fd: int, key: bytes, value: bytes, flags: int = ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    sys_bpf(MAP_UPDATE_ELEM, MapElemAttr(map_fd=fd, key=_addr(k), value=_addr(v), flags=flags))


def map_delete(fd: int, key: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    sys_bpf(MAP_DELETE_ELEM, MapElemAttr(map_fd=fd, key=_addr(k)))


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    """`count` keys (packed) get `count` values (packed) in one call (Linux 5.6+)."""
    k = ctypes.create_string_buffer(keys, len(keys))
    v = ctypes.create_string_buffer(values, len(values))
    attr = MapBatchAttr(keys=_addr(k), values=_addr(v), count=count, map_fd=fd)
    sys_bpf(MAP_UPDATE_BATCH, attr)
    if attr.count != count:   # the kernel says how many it did
        raise BpfError(errno_mod.EIO, "MAP_UPDATE_BATCH")


def map_delete_batch(fd: int, keys: bytes, count: int) -> None:
    """Delete `count` keys (packed) in one call (Linux 5.6+)."""
    k = ctypes.create_string_buffer(keys, len(keys))
    attr = MapBatchAttr(keys=_addr(k), count=count, map_fd=fd)
    sys_bpf(MAP_DELETE_BATCH, attr)
    if attr.count != count:
        raise BpfError(errno_mod.EIO, "MAP_DELETE_BATCH")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under `key`, or None when there is none (ENOENT)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        sys_bpf(MAP_LOOKUP_ELEM, MapElemAttr(map_fd=fd, key=_addr(k), value=_addr(v)))
    except BpfError as e:
        if e.errno == errno_mod.ENOENT:
            return None
        raise
    return v.raw


def map_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after `key` (the first key for None), or None at the end."""
    k = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    nk = ctypes.create_string_buffer(key_size)
    try:
        sys_bpf(MAP_GET_NEXT_KEY, MapElemAttr(map_fd=fd, key=_addr(k), value=_addr(nk)))
    except BpfError as e:
        if e.errno == errno_mod.ENOENT:
            return None
        raise
    return nk.raw


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys: list[bytes] = []
    key = map_next_key(fd, None, key_size)
    while key is not None:
        keys.append(key)
        key = map_next_key(fd, key, key_size)
    return keys


def map_freeze(fd: int) -> None:
    sys_bpf(MAP_FREEZE, MapFdAttr(map_fd=fd))


class LoadFailed(Exception):
    """PROG_LOAD or BTF_LOAD failed; carries the errno and whatever log the kernel wrote."""

    def __init__(self, err: BpfError, log: str) -> None:
        super().__init__(str(err))
        self.errno = err.errno
        self.bpf_error = err
        self.log = log


def _log_text(buf: ctypes.Array | None) -> str:
    return buf.value.decode(errors="replace") if buf is not None else ""


MAX_LOG = 1 << 28   # the kernel refuses log buffers above UINT_MAX >> 2


def btf_load(raw: bytes, *, log_size: int = 1 << 16) -> int:
    """Load raw BTF; returns its fd. On failure LoadFailed carries the BTF verifier log."""
    data = ctypes.create_string_buffer(raw, len(raw))
    log = ctypes.create_string_buffer(log_size)
    attr = BtfLoadAttr(btf=_addr(data), btf_size=len(raw), btf_log_buf=_addr(log),
                       btf_log_size=log_size, btf_log_level=1)
    try:
        return sys_bpf(BTF_LOAD, attr)
    except BpfError as e:
        raise LoadFailed(e, _log_text(log)) from None


def prog_load(insns: bytes, license: str, *, name: str = "", prog_type: int = PROG_TYPE_XDP,
              log_level: int = 0, log_size: int = 1 << 20, btf_fd: int = 0,
              func_info: list[tuple[int, int]] | None = None,
              line_info: list[tuple[int, int, int, int]] | None = None) -> tuple[int, str]:
    """Load a program through the verifier; returns (fd, log).

    With log_level 0 the kernel writes no log. Otherwise the log buffer grows to the
    size the kernel reports (log_true_size) when it did not fit (ENOSPC): the kernel
    refuses to create a program whose log was truncated."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())  # "" = not GPL: the kernel decides
    fi = None
    if func_info:
        fi = (FuncInfo * len(func_info))(*(FuncInfo(off, tid) for off, tid in func_info))
    li = None
    if line_info and fi is not None:   # the kernel takes line_info only with func_info
        li = (LineInfo * len(line_info))(*(LineInfo(*rec) for rec in line_info))
    while True:
        log = ctypes.create_string_buffer(log_size) if log_level else None
        attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                            insns=_addr(code), license=_addr(lic),
                            log_level=log_level, log_size=log_size if log_level else 0,
                            log_buf=_addr(log), prog_name=object_name(name),
                            prog_btf_fd=btf_fd if fi is not None else 0)
        if fi is not None:
            attr.func_info_rec_size = ctypes.sizeof(FuncInfo)
            attr.func_info = ctypes.addressof(fi)
            attr.func_info_cnt = len(func_info or ())
        if li is not None:
            attr.line_info_rec_size = ctypes.sizeof(LineInfo)
            attr.line_info = ctypes.addressof(li)
            attr.line_info_cnt = len(line_info or ())
        try:
            fd = sys_bpf(PROG_LOAD, attr)
            return fd, _log_text(log)
        except BpfError as e:
            if (e.errno == errno_mod.ENOSPC and log_level and log_size < MAX_LOG):
                log_size = min(MAX_LOG, max(attr.log_true_size + 1, log_size * 4))
                continue
            raise LoadFailed(e, _log_text(log)) from None


class TestRunner:
    """Repeated BPF_PROG_TEST_RUN of one program over data placed in one reusable buffer
    (the per-run cost is then the syscall, not Python allocations)."""

    __test__ = False  # not a pytest class

    def __init__(self, prog_fd: int, capacity: int) -> None:
        self.buf = ctypes.create_string_buffer(capacity)
        self.capacity = capacity
        self.ctx = XdpMd()
        self.attr = TestRunAttr(prog_fd=prog_fd, data_in=ctypes.addressof(self.buf), repeat=1,
                                ctx_in=ctypes.addressof(self.ctx),
                                ctx_size_in=ctypes.sizeof(XdpMd))

    def run(self, size_in: int, data: int, data_end: int) -> int:
        """Run over buf[:size_in] with ctx data/data_end offsets; returns retval."""
        self.ctx.data, self.ctx.data_end = data, data_end
        self.attr.data_size_in = size_in
        # the kernel writes the output size back; left there it would clamp the next run
        # (ENOSPC after the program already ran)
        self.attr.data_size_out = 0
        sys_bpf(PROG_TEST_RUN, self.attr)
        return self.attr.retval


def possible_cpus() -> int:
    """How many per-CPU slots a percpu map value has (the kernel's possible CPUs)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


def close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
