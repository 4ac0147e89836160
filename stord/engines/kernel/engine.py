"""The kernel engine: programs verified by the stock Linux verifier and run by the kernel.

A program is loaded as a BPF_PROG_TYPE_XDP program over bpf(2) (BTF, then maps with their
initial contents, .rodata frozen so the verifier sees parameters as constants, then the
program with its map immediates relocated to fds) and run once per chunk with
BPF_PROG_TEST_RUN: data_in = struct stord_meta + chunk, ctx_in = struct xdp_md with
data = 16 (the metadata in front of the data), data_end = 16 + len.

Why our own ctypes layer (bpf.py) and not a library: the programs arrive already linked
and relocated as a `Program` (parameters patched into .rodata by `with_params`), so we need
the low-level commands, not an ELF object loader. On PyPI, pylibbpf (0.0.x, a pybind11
wheel) wraps libbpf's object API (open an ELF file by path, load it whole): it would bypass
our Program and its parameters, and has no test-run call. bcc (python3-bpfcc) compiles C
and needs kernel headers. Debian's libbpf1 through ctypes would need the same attribute
structs (as libbpf's *_opts) plus a system library; the bpf(2) ABI is stable and small,
so ~200 lines of ctypes cover it with nothing to install.

Kernel rules that shape the run (net/bpf/test_run.c, bpf_prog_test_run_xdp):
- at most PAGE_SIZE - headroom - tailroom = 3536 bytes of linear data including the
  16-byte metadata on x86-64: `chunk_size` is 3520, and longer chunks are run in pieces;
  bytes past that would silently go to fragments the program cannot see through
  ctx->data_end;
- data_size_in - metadata must be >= ETH_HLEN (14): a shorter (or empty) chunk is padded
  with zeros that stay outside ctx->data_end (data_end may be below data_size_in; the
  padding becomes an XDP fragment, reachable only through bpf_xdp_load_bytes, which in the
  userspace engines faults instead);
- the run happens on the calling CPU: per-CPU maps are read on the CPU the instance pins
  its runs to, so they behave as their plain kind on one CPU, as in the interp engine.

Verification is the expensive part (~100 ms for a built-in; the runs over a small file
take ~1 ms), so verified programs are cached per process (cache.py): a load of the same
program (code, maps, initial data with the parameters, helper set, name, license, BTF)
takes the cached kernel objects, whose maps were reset to their initial contents when the
previous Instance closed; an Instance holds its entry alone. A program the verifier
refuses is never cached. `clear_cache()` releases every cached program's kernel objects.

`budget` does not apply: the verifier proves termination. The "conformance" helper set
runs only programs without helper calls (the kernel's helper ids are Linux's); for those
`call(mem)` puts mem in the packet behind a bounds-checking prologue (see `_conformance`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
from typing import ClassVar, cast

from stord.engines.base import DEFAULT_BUDGET, META_SIZE, Engine, Instance
from stord.engines.kernel import bpf
from stord.engines.kernel.btfload import (
    BtfFormatError,
    KernelBtf,
    func_info,
    kernel_btf,
    line_info,
)
from stord.engines.kernel.cache import PROGRAMS
from stord.errors import (
    EngineUnavailable,
    LimitExceeded,
    LoadError,
    ProgramFault,
    ValidationError,
    VerifierError,
)
from stord.program.isa import ADD as ALU_ADD
from stord.program.isa import (
    ALU64,
    CALL_OP,
    DW,
    EXIT_OP,
    JA,
    JGT,
    JMP,
    LDDW,
    LDX,
    MEM,
    MOV,
    PSEUDO_CALL,
    PSEUDO_MAP_FD,
    PSEUDO_MAP_VALUE,
    RSH,
    SUB,
    Insn,
    K,
    W,
    X,
    encode,
)
from stord.program.model import (
    MAP_ARRAY,
    MAP_HASH,
    MAP_PERCPU_ARRAY,
    MAP_PERCPU_HASH,
    MapDef,
    Program,
)
from stord.query.state import State

STORD_LAST = 1
ETH_HLEN = 14
LINEAR_MAX = 3536          # PAGE_SIZE - (XDP_PACKET_HEADROOM - 16) - tailroom(320), x86-64
CONFORMANCE_MEM = 1024     # the packet size a conformance program's r1 may reach
TAIL_LINES = 12            # verifier log lines kept in a VerifierError message

_PERCPU = (MAP_PERCPU_ARRAY, MAP_PERCPU_HASH)
_ARRAYS = (MAP_ARRAY, MAP_PERCPU_ARRAY)
_HASHES = (MAP_HASH, MAP_PERCPU_HASH)
RESET_BATCH = 4096         # map entries per batched bpf(2) call when resetting maps
_NO_BATCH = (errno.EINVAL, errno.EOPNOTSUPP, 524)   # 524: the kernel's ENOTSUPP
_META = struct.Struct("<QII")   # struct stord_meta
_GLUED = re.compile(r"^(\d+: \(\w\w\) .*?)\s*(BPF program is too large\..*)$", re.M)
_STATS = re.compile(r"^(processed \d+ insns|verification time|stack depth|mark_read|"
                    r"peak_states|max_states_per_insn)")


class _Objects:
    """Every kernel object (fd) one load made; close() releases them all, once."""

    def __init__(self) -> None:
        self.btf_fd = -1
        self.map_fds: list[int] = []
        self.prog_fds: list[int] = []

    def close(self) -> None:
        for fd in [*self.prog_fds, *self.map_fds, self.btf_fd]:
            if fd >= 0:
                bpf.close_fd(fd)
        self.prog_fds, self.map_fds, self.btf_fd = [], [], -1


def _verifier_error(prog: Program, e: bpf.LoadFailed) -> VerifierError:
    # the kernel appends some errors to a half-written instruction line: split them off
    log = _GLUED.sub(lambda m: m.group(1) + "\n" + m.group(2), e.log)
    lines = [ln for ln in log.splitlines() if ln.strip()]
    meaningful = [ln for ln in lines if not _STATS.match(ln)]
    tail = meaningful[-TAIL_LINES:]
    head = tail[-1] if tail else os.strerror(e.errno or 0)
    msg = f"kernel verifier rejected {prog.name!r} ({errno.errorcode.get(e.errno or 0, '?')}): " \
          f"{head}"
    if len(tail) > 1:
        msg += "\n" + "\n".join(tail)
    err = VerifierError(msg)
    err.log = e.log  # type: ignore[attr-defined]  # the whole log for `stord verify`
    return err


def _pad(value: bytes, size: int) -> bytes:
    return value[:size].ljust(size, b"\0")


class _Loader:
    """Creates BTF, maps and programs for one Program; on any failure closes what it made."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.objs = _Objects()
        self.ncpus = bpf.possible_cpus()
        self.kbtf: KernelBtf | None = None
        self.btf_note = ""   # why the program runs without BTF, if it does
        self.batches = True  # the kernel has MAP_*_BATCH (until it says otherwise)

    def load_btf(self) -> None:
        try:
            self.kbtf = kernel_btf(self.prog.elf)
        except (BtfFormatError, ValueError) as e:
            self.btf_note = f"BTF not usable: {e}"
            return
        if self.kbtf is None:
            self.btf_note = "object has no .BTF"
            return
        try:
            self.objs.btf_fd = bpf.btf_load(self.kbtf.raw)
        except bpf.LoadFailed as e:
            # as libbpf: BTF is optional unless a feature needs it (then PROG_LOAD says so)
            self.btf_note = f"kernel refused BTF: {e}: {e.log.strip()[-200:]}"
            self.kbtf = None

    def value_slot(self, m: MapDef) -> int:
        return (m.value_size + 7) // 8 * 8

    def lookup_size(self, m: MapDef) -> int:
        return self.value_slot(m) * self.ncpus if m.type in _PERCPU else m.value_size

    def create_maps(self) -> None:
        for m in self.prog.maps:
            flags = m.flags | (bpf.F_RDONLY_PROG if m.readonly else 0)
            kid, vid = m.key_type_id, m.value_type_id
            if m.is_global_data and self.kbtf is not None:
                kid, vid = 0, self.kbtf.datasec_ids.get(m.name, vid)
            fd = -1
            if self.objs.btf_fd >= 0 and vid:
                try:
                    fd = bpf.map_create(m.type, m.key_size, m.value_size, m.max_entries,
                                        flags=flags, name=m.name, btf_fd=self.objs.btf_fd,
                                        btf_key_type_id=kid, btf_value_type_id=vid)
                except bpf.BpfError:
                    fd = -1   # as libbpf: retry without BTF types
            if fd < 0:
                try:
                    fd = bpf.map_create(m.type, m.key_size, m.value_size, m.max_entries,
                                        flags=flags, name=m.name)
                except bpf.BpfError as e:
                    raise LoadError(f"map {m.name!r} (type {m.type}, key {m.key_size}, "
                                    f"value {m.value_size}, {m.max_entries} entries): "
                                    f"{e.strerror}") from None
            self.objs.map_fds.append(fd)
            try:
                self.set_initial(m, fd)
                if m.readonly:
                    bpf.map_freeze(fd)
            except bpf.BpfError as e:
                raise LoadError(f"map {m.name!r}: setting its contents: {e.strerror}") from None

    def set_initial(self, m: MapDef, fd: int) -> None:
        if m.initial is not None:
            bpf.map_update(fd, bytes(4), self.full_value(m, m.initial))

    def full_value(self, m: MapDef, value: bytes) -> bytes:
        """A value as map_update wants it: one 8-byte aligned slot per CPU for per-CPU maps."""
        value = _pad(value, m.value_size)
        return _pad(value, self.value_slot(m)) * self.ncpus if m.type in _PERCPU else value

    def reset_maps(self) -> None:
        """Every writable map back to what create_maps() left: arrays rewritten (zeros, then
        the initial value of entry 0), hashes emptied (and the initial entry put back).
        Frozen maps need nothing: neither the program nor user space can write them."""
        for m, fd in zip(self.prog.maps, self.objs.map_fds, strict=True):
            if m.readonly:
                continue
            if m.type in _ARRAYS:
                zero = self.full_value(m, b"")
                first = 0 if m.initial is None else 1   # entry 0 gets its initial value below
                for lo in range(first, m.max_entries, RESET_BATCH):
                    keys = [i.to_bytes(4, "little")
                            for i in range(lo, min(lo + RESET_BATCH, m.max_entries))]
                    self._update_all(fd, keys, zero)
            else:
                keys = bpf.map_keys(fd, m.key_size)
                for lo in range(0, len(keys), RESET_BATCH):
                    self._delete_all(fd, keys[lo:lo + RESET_BATCH])
                if bpf.map_next_key(fd, None, m.key_size) is not None:
                    raise bpf.BpfError(errno.EBUSY, "MAP_DELETE_ELEM")
            self.set_initial(m, fd)

    # one bpf(2) call per RESET_BATCH entries where the kernel has batch commands (5.6+)
    def _update_all(self, fd: int, keys: list[bytes], value: bytes) -> None:
        if self.batches and len(keys) > 1:
            try:
                bpf.map_update_batch(fd, b"".join(keys), value * len(keys), len(keys))
                return
            except bpf.BpfError as e:
                self._no_batches(e)
        for key in keys:
            bpf.map_update(fd, key, value)

    def _delete_all(self, fd: int, keys: list[bytes]) -> None:
        if self.batches and len(keys) > 1:
            try:
                bpf.map_delete_batch(fd, b"".join(keys), len(keys))
                return
            except bpf.BpfError as e:
                self._no_batches(e)
        for key in keys:
            bpf.map_delete(fd, key)

    def _no_batches(self, e: bpf.BpfError) -> None:
        if e.errno not in _NO_BATCH:
            raise e
        self.batches = False

    def map_bytes(self) -> int:
        """Map memory this program pins in the kernel (keys and values, per-CPU copies)."""
        return sum((m.key_size + self.lookup_size(m)) * m.max_entries for m in self.prog.maps)

    def relocated(self, insns: list[Insn]) -> bytes:
        out = list(insns)
        nmaps = len(self.objs.map_fds)
        for i, ins in enumerate(out):
            if ins.op == LDDW and ins.src in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                if not 0 <= ins.imm < nmaps:
                    raise LoadError(f"instruction {i}: map index {ins.imm} out of range")
                out[i] = ins._replace(imm=self.objs.map_fds[ins.imm])
        return encode(out)

    def load_prog(self, insns: list[Insn], *, log_level: int,
                  with_lines: bool = True) -> tuple[int, str]:
        """(fd, log); a verifier rejection becomes VerifierError with the log's tail.

        Logs cost: at level 1 the kernel prints every instruction it walks (6x slower on a
        program that hits the 1 M limit), and keeps only the failing path. So a load runs
        with level 0 (or LOG_STATS for `stord verify`) and only a rejection is loaded again
        with level 1 for its path; one that ran out of instructions (E2BIG) gets statistics."""
        fi = li = None
        if self.kbtf is not None and self.objs.btf_fd >= 0:
            fi = func_info(self.prog.name, insns, self.kbtf)
            if log_level & bpf.LOG_LEVEL1 and with_lines:   # source lines show in a path
                li = line_info(self.prog.name, insns, self.kbtf)
        code = self.relocated(insns)
        try:
            fd, log = bpf.prog_load(code, self.prog.license, name=self.prog.name,
                                    log_level=log_level, btf_fd=max(self.objs.btf_fd, 0),
                                    func_info=fi, line_info=li)
        except bpf.LoadFailed as e:
            if e.errno == errno.EPERM:
                raise EngineUnavailable(f"kernel refused BPF_PROG_LOAD: {e}") from None
            if e.errno == errno.E2BIG:
                if not log_level:
                    return self.load_prog(insns, log_level=bpf.LOG_STATS)
            elif not log_level & bpf.LOG_LEVEL1:
                return self.load_prog(insns, log_level=bpf.LOG_LEVEL1 | bpf.LOG_STATS)
            if li is not None and "line_info" in e.log:
                return self.load_prog(insns, log_level=log_level, with_lines=False)
            if self.btf_note and "func_info" in e.log:
                e.log += f"\n({self.btf_note})"
            raise _verifier_error(self.prog, e) from None
        self.objs.prog_fds.append(fd)
        return fd, log

    def close(self) -> None:
        self.objs.close()


def _check_helpers(prog: Program, helpers: str) -> None:
    if helpers == "linux":
        return
    if helpers != "conformance":
        raise ValidationError(f"unknown helper set {helpers!r}")
    for i, ins in enumerate(prog.insns):
        if ins.op == CALL_OP and ins.src != PSEUDO_CALL:
            raise ValidationError(f"instruction {i}: helper {ins.imm} of the conformance set "
                                  "does not exist in the kernel engine")


class _Loaded:
    """One verified program with its maps: what the process-wide cache keeps between
    Instances (cache.PROGRAMS, at most one Instance at a time)."""

    def __init__(self, prog: Program, helpers: str) -> None:
        self.loader = ld = _Loader(prog)
        self.pid = os.getpid()
        self.conf_fds: tuple[int, int | None] | None = None
        self.runners: dict[int, bpf.TestRunner] = {}
        try:
            ld.load_btf()
            ld.create_maps()
            if helpers == "conformance":
                lo, _ = ld.load_prog(_conformance(prog.insns, high=False), log_level=0)
                hi = None
                if _exits_rewritable(prog.insns):
                    hi, _ = ld.load_prog(_conformance(prog.insns, high=True), log_level=0)
                self.conf_fds = (lo, hi)
                self.fd = lo
            else:
                self.fd, _ = ld.load_prog(prog.insns, log_level=0)
        except BaseException:
            ld.close()
            raise
        self.nbytes = ld.map_bytes()
        self.resettable = all(m.readonly or m.type in (*_ARRAYS, *_HASHES) for m in prog.maps)

    def reset(self) -> None:
        self.loader.reset_maps()   # BpfError is an OSError: the cache then closes the entry

    def close(self) -> None:
        self.runners.clear()
        self.loader.close()


class _Key:
    """Everything of a program the loader hands the kernel, compared exactly (equal hashes
    are not enough): the linked code, every map definition with its initial data (so the
    parameters), name, license, the object (its BTF) and the helper set. The same identity
    as Program.digest and more, at a tenth of its cost (no encoding); the hash is computed
    once, as the cache looks a key up more than once."""

    __slots__ = ("_hash", "parts")

    def __init__(self, prog: Program, helpers: str) -> None:
        self.parts = (helpers, prog.name, prog.license, tuple(prog.insns), tuple(prog.maps),
                      prog.elf)
        self._hash = hash(self.parts)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, _Key) and self._hash == other._hash
                                 and self.parts == other.parts)


class KernelInstance(Instance):
    """A program's kernel objects, taken from the cache of verified programs (or loaded and
    verified), in the state of a fresh load; close() resets them and gives them back."""

    def __init__(self, prog: Program, helpers: str) -> None:
        self.prog = prog
        self._closed = True     # until there is something to give back
        self._cpu: int | None = None
        if any(m.type in _PERCPU for m in prog.maps):
            self._cpu = min(os.sched_getaffinity(0))
        self._key = _Key(prog, helpers)
        loaded = cast("_Loaded | None", PROGRAMS.acquire(self._key))
        if loaded is None:
            loaded = _Loaded(prog, helpers)   # a VerifierError is raised here: never cached
        self._loaded = loaded
        self._closed = False
        self._loader = loaded.loader
        self._fd = loaded.fd
        self._conf_fds = loaded.conf_fds
        self._runners = loaded.runners

    # -- running -----------------------------------------------------------------------
    def _runner(self, fd: int) -> bpf.TestRunner:
        r = self._runners.get(fd)
        if r is None:
            r = self._runners[fd] = bpf.TestRunner(fd, LINEAR_MAX)
        return r

    def _test_run(self, fd: int, meta: tuple[int, int], data: bytes | memoryview) -> int:
        """One run: stord_meta(offset, flags) then data; the program sees len(data) bytes.
        Below ETH_HLEN the kernel wants more input: zeros past data_end make it up."""
        runner = self._runner(fd)
        n = len(data)
        _META.pack_into(runner.buf, 0, meta[0], meta[1], 0)
        ctypes.memmove(ctypes.addressof(runner.buf) + META_SIZE, bytes(data), n)
        size_in = META_SIZE + n
        if n < ETH_HLEN:
            ctypes.memset(ctypes.addressof(runner.buf) + size_in, 0, ETH_HLEN - n)
            size_in = META_SIZE + ETH_HLEN
        saved = None
        if self._cpu is not None:
            saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self._cpu})
        try:
            return runner.run(size_in, META_SIZE, META_SIZE + n)
        except bpf.BpfError as e:
            raise ProgramFault(f"BPF_PROG_TEST_RUN failed: {e.strerror}") from None
        finally:
            if saved is not None:
                os.sched_setaffinity(0, saved)

    def run_chunk(self, data: bytes | memoryview, offset: int, last: bool) -> int:
        self._check_open()
        step = KernelEngine.chunk_size
        if len(data) <= step:
            return self._test_run(self._fd, (offset, STORD_LAST if last else 0), data)
        view = memoryview(data)
        verdict = None
        for pos in range(0, len(data), step):
            # longer chunks run in pieces: the kernel takes at most `step` bytes of data
            final = pos + step >= len(data)
            r = self._test_run(self._fd, (offset + pos, STORD_LAST if (last and final) else 0),
                               view[pos:pos + step])
            verdict = r if verdict is None or r == 0 else verdict   # ABORTED sticks
        assert verdict is not None
        return verdict

    def call(self, mem: bytearray | None) -> int:
        self._check_open()
        if self._conf_fds is None:
            raise ValidationError("call() needs an instance loaded with helpers='conformance'")
        raw = bytes(mem or b"")
        if len(raw) > CONFORMANCE_MEM:
            raise LimitExceeded(f"conformance memory is at most {CONFORMANCE_MEM} bytes")
        padded = raw.ljust(CONFORMANCE_MEM, b"\0")
        lo_fd, hi_fd = self._conf_fds
        lo = self._test_run(lo_fd, (len(raw), 0), padded)   # the prologue reads len from meta
        if hi_fd is None:
            return lo
        hi = self._test_run(hi_fd, (len(raw), 0), padded)
        return (hi << 32) | lo

    # -- state -------------------------------------------------------------------------
    def _value(self, m: MapDef, raw: bytes) -> bytes:
        if m.type not in _PERCPU:
            return raw[:m.value_size]
        slot = self._loader.value_slot(m)
        cpu = self._cpu or 0
        return raw[cpu * slot:cpu * slot + m.value_size]

    def read_state(self) -> State:
        self._check_open()
        state = State()
        for m, fd in zip(self.prog.maps, self._loader.objs.map_fds, strict=True):
            size = self._loader.lookup_size(m)
            try:
                if m.is_global_data:
                    if not m.readonly:
                        raw = bpf.map_lookup(fd, bytes(4), size)
                        state.globals[m.name] = self._value(m, raw or bytes(size))
                    continue
                entries: dict[bytes, bytes] = {}
                for key in bpf.map_keys(fd, m.key_size):
                    raw = bpf.map_lookup(fd, key, size)
                    if raw is not None:
                        entries[key] = self._value(m, raw)
                state.maps[m.name] = entries
            except bpf.BpfError as e:
                raise ProgramFault(f"reading map {m.name!r}: {e.strerror}") from None
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise ProgramFault("kernel instance used after close()")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        PROGRAMS.release(self._key, self._loaded)


def _exits_rewritable(insns: list[Insn]) -> bool:
    """The high half of r0 needs a second program whose exits shift r0; only done for
    programs without subprograms (their exits would have to stay)."""
    return not any((i.op == CALL_OP and i.src == PSEUDO_CALL) or
                   (i.op == LDDW and i.src == 4) for i in insns) and len(insns) < 30000


def _conformance(insns: list[Insn], *, high: bool) -> list[Insn]:
    """Wrap a conformance program: r1 = the packet (CONFORMANCE_MEM bytes, bounds checked
    so the verifier allows r1-relative access), r2 = len(mem) (from the metadata), r0 and
    r3-r5 zeroed. With `high`, every exit becomes a jump to `r0 >>= 32; exit`."""
    ldx_w = LDX | MEM | W
    pro = [
        Insn(ldx_w, 2, 1, 8),                       # r2 = ctx->data_meta
        Insn(ldx_w, 3, 1, 0),                       # r3 = ctx->data
        Insn(ldx_w, 4, 1, 4),                       # r4 = ctx->data_end
        Insn(ALU64 | MOV | X, 5, 2),                # r5 = r2
        Insn(ALU64 | ALU_ADD | K, 5, 0, 0, 8),      # r5 += 8
        Insn(JMP | JGT | X, 5, 3, 10),              # if r5 > r3 goto fail
        Insn(ALU64 | MOV | X, 5, 3),                # r5 = r3
        Insn(ALU64 | ALU_ADD | K, 5, 0, 0, CONFORMANCE_MEM),
        Insn(JMP | JGT | X, 5, 4, 7),               # if r5 > r4 goto fail
        Insn(LDX | MEM | DW, 2, 2, 0),              # r2 = meta.offset (= len(mem))
        Insn(ALU64 | MOV | X, 1, 3),                # r1 = data
        Insn(ALU64 | MOV | K, 0, 0, 0, 0),
        Insn(ALU64 | MOV | K, 3, 0, 0, 0),
        Insn(ALU64 | MOV | K, 4, 0, 0, 0),
        Insn(ALU64 | MOV | K, 5, 0, 0, 0),
        Insn(JMP | JA, 0, 0, 2),                    # goto body
        Insn(ALU64 | MOV | K, 0, 0, 0, 0),          # fail: r0 = 0
        Insn(EXIT_OP),
    ]
    body = list(insns)
    if high:
        end = len(body)
        for i, ins in enumerate(body):
            if ins.op == EXIT_OP:
                body[i] = Insn(JMP | JA, 0, 0, end - i - 1)
        body += [Insn(ALU64 | RSH | K, 0, 0, 0, 32), Insn(EXIT_OP)]
    return pro + body


class KernelEngine(Engine):
    name = "kernel"
    # data bytes per BPF_PROG_TEST_RUN: the kernel's linear XDP data less the metadata
    chunk_size: ClassVar[int] = LINEAR_MAX - META_SIZE
    _probe_result: ClassVar[tuple[str | None] | None] = None

    @classmethod
    def probe(cls) -> str | None:
        """None when a trivial XDP program loads and test-runs here, else why not."""
        if cls._probe_result is None:
            cls._probe_result = (_probe(),)
        return cls._probe_result[0]

    def load(self, prog: Program, *, budget: int = DEFAULT_BUDGET,
             helpers: str = "linux") -> KernelInstance:
        _check_helpers(prog, helpers)
        return KernelInstance(prog, helpers)


def _probe() -> str | None:
    """Load r0 = data_end - data and run it: on an empty chunk (padding rule) and on a
    full one (the kernel must keep chunk_size bytes linear, or programs would silently
    see less than their chunk)."""
    code = encode([Insn(LDX | MEM | W, 2, 1, 0), Insn(LDX | MEM | W, 0, 1, 4),
                   Insn(ALU64 | SUB | X, 0, 2), Insn(EXIT_OP)])
    try:
        fd, _ = bpf.prog_load(code, "GPL", name="stord_probe")
    except bpf.LoadFailed as e:
        return f"cannot load an XDP program: {errno.errorcode.get(e.errno or 0, '?')} " \
               f"({os.strerror(e.errno or 0)})"
    except OSError as e:
        return f"bpf(2) unavailable: {e}"
    try:
        runner = bpf.TestRunner(fd, LINEAR_MAX)
        if runner.run(META_SIZE + ETH_HLEN, META_SIZE, META_SIZE) != 0:
            return "BPF_PROG_TEST_RUN does not honour ctx_in.data_end"
        n = KernelEngine.chunk_size
        got = runner.run(META_SIZE + n, META_SIZE, META_SIZE + n)
        if got != n:
            return f"BPF_PROG_TEST_RUN keeps only {got} bytes of XDP data linear " \
                   f"(the kernel engine needs {n})"
    except bpf.BpfError as e:
        return f"BPF_PROG_TEST_RUN failed: {errno.errorcode.get(e.errno or 0, '?')} " \
               f"({e.strerror})"
    finally:
        bpf.close_fd(fd)
    return None


def clear_cache() -> None:
    """Close the kernel objects of every cached program not in use by an Instance."""
    PROGRAMS.clear()


def verify_program(prog: Program) -> str:
    """Load `prog` through the kernel verifier and release it: the verifier's statistics
    (instructions processed, states, stack depth), or VerifierError with the tail of the
    failing path's log."""
    ld = _Loader(prog)
    try:
        ld.load_btf()
        ld.create_maps()
        _, log = ld.load_prog(prog.insns, log_level=bpf.LOG_STATS)
        if ld.btf_note:
            log += f"\n({ld.btf_note})\n"
        return log
    finally:
        ld.close()

