"""LLVM IR -> optimised native object -> loaded code, with an in-process and an on-disk cache.

The cache key is the program digest (bytecode, maps, initial data including the .rodata
parameters) plus the helper set, the translator version, the LLVM version and the host CPU,
because the object is compiled for this CPU. Objects are position independent of any
instance: everything instance-specific is reached through the Env pointer at run time, so one
compiled object serves every instance of a program.

On-disk cache: $STORD_JIT_CACHE, else the toolchain's cache directory + /jit
($STORD_CACHE_DIR/jit or ~/.cache/stord/jit); STORD_JIT_CACHE=off disables it. Files are
written atomically (temp file + rename), by a background thread.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import hashlib
import itertools
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import llvmlite
import llvmlite.binding as llvm

from stord.engines.jit import layout as L
from stord.engines.jit.translate import ENTRY_NAME, ModuleTranslator, rodata_text
from stord.errors import CompileError
from stord.program import isa, toolchain
from stord.program.isa import Insn, encode
from stord.program.model import Program

# Part of every cache key, with a hash of the translator's source files.
TRANSLATOR_VERSION = "6"

# "tiered" (default): first-tier code at once (cheap to compile, see optimise(); the same
# object serves every parameter set of a program), then LLVM's O2 pipeline with the
# parameters as constants in a background thread, swapped in between chunks and kept in the
# caches; "fast" or "o2": only that tier.
PIPELINE = os.environ.get("STORD_JIT_PIPELINE", "tiered")

ENTRY_TYPE = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64,
                              ctypes.c_uint64)


@dataclass
class Slot:
    """Shared by every Compiled of one key: the fully optimised code once it is ready."""
    best: Compiled | None = None


@dataclass
class Compiled:
    key: str
    entry: ctypes._CFuncPtr        # i64 stord_entry(env*, r1, r2)
    engine: llvm.ResourceTracker   # keeps the code mapped
    seconds: float                 # validate, translate, optimise, emit (0 from a cache)
    source: str                    # "compiled", "disk" or "memory"
    tier: str = "o2"               # "fast" until the background O2 code replaces it
    slot: Slot = field(default_factory=Slot)


def _unserialise_llvmlite() -> None:
    """llvmlite runs every LLVM call of the process under one lock, for users that share
    its global LLVMContext. stord's compiles share no context, module or target machine
    between threads (optimise), which LLVM supports (ORC compiles concurrently the same
    way), and with the lock a load waited for the whole of another program's background
    O2 pass run: a cold load right after another's took 233-350 ms, without it 52-99 ms.
    The lock is an internal of llvmlite: if it is not where expected, calls stay
    serialised (slower, not wrong)."""
    inner = getattr(getattr(getattr(llvm, "ffi", None), "lib", None), "_lock", None)
    if inner is not None and hasattr(inner, "_lock"):
        inner._lock = _NoLock()


class _NoLock:
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        pass


_unserialise_llvmlite()
_lock = threading.Lock()
_machine: llvm.TargetMachine | None = None
_fast_machine: llvm.TargetMachine | None = None
_memory: OrderedDict[str, Compiled] = OrderedDict()
MEMORY_CACHE_ENTRIES = 64   # compiled programs kept for reuse (instances keep their own)


def target_machine() -> llvm.TargetMachine:
    global _machine
    if _machine is None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        # Innermost loops (a program's per-byte bpf_loop) start on a 64-byte line: where
        # the x86 back end's default 16 bytes left the byte loop across a line, the same
        # code ran 15-25% slower (measured on this EPYC, A/B in one process); with 64 its
        # speed no longer depends on the size of the code before it. An unknown option
        # (another LLVM) is ignored.
        llvm.set_option("stord", "-x86-experimental-pref-innermost-loop-alignment=6")
        # SimplifyCFG folds chains of branches into `select i1 a, true, b`, which the -O0
        # back end's fast instruction selector cannot select: each such block fell back to
        # SelectionDAG. Without the fold the first tier emits in ~3/4 of the time and runs
        # no slower, and the O2 code runs 1-2% fewer instructions per byte (callgrind:
        # stats 15.67 -> 15.39, hist 16.07 -> 15.81, groupby 30.54 -> 30.30).
        llvm.set_option("stord", "-simplifycfg-branch-fold-threshold=0")
        # Position-independent code, small code model: an object reaches its own code and
        # data by 32-bit offsets, and libc through the linker's stubs. That needs a linker
        # that puts each object in one allocation (JITLink does, see _jit): the JIT's default
        # linker, RuntimeDyld, allocates sections one by one, and a daemon maps multi-GiB
        # files in between (RuntimeDyld is why the JIT's default is the large model). Under
        # the large model the first tier's fast instruction selector could not lower a call
        # (each fell back to SelectionDAG).
        target = llvm.Target.from_default_triple()
        _machine = target.create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            opt=2, reloc="pic", codemodel="small")
    return _machine


def fast_target_machine() -> llvm.TargetMachine:
    """Code generation for the first tier: LLVM's -O0 back end (fast instruction selection
    and register allocation), about 5x quicker to emit than -O2 (measured 7 vs 47 ms on
    stats); its code runs at about half the speed until the O2 code replaces it. Same code
    model as target_machine: with it every call is selected by the fast selector (under
    the large model each of the ~37 calls in stats fell back to SelectionDAG; emit 36.1 ->
    28.8 M instructions, callgrind)."""
    global _fast_machine
    if _fast_machine is None:
        tm = target_machine()   # initialises the native target
        _fast_machine = llvm.Target.from_triple(tm.triple).create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
            opt=0, reloc="pic", codemodel="small")
    return _fast_machine


@functools.cache
def _libc_symbols() -> dict[str, int]:
    """Symbols the emitted code may call: memcpy/memmove/memset (variable sizes), ktime."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return {name: ctypes.cast(getattr(libc, name), ctypes.c_void_p).value
            for name in ("memcpy", "memmove", "memset", "clock_gettime")}


@functools.cache
def _build_tag() -> bytes:
    """What else the object code depends on: the translator's source (hashed, so a changed
    translator can never pick up stale cache files), LLVM and the host CPU."""
    tm = target_machine()
    src = hashlib.sha256()
    for name in ("translate.py", "irtext.py", "runtime.py", "kinds.py", "layout.py",
                 "compile.py"):
        src.update((Path(__file__).parent / name).read_bytes())
    src.update((Path(__file__).parents[2] / "program" / "validate.py").read_bytes())
    parts = (TRANSLATOR_VERSION, src.hexdigest(), PIPELINE, llvmlite.__version__,
             str(llvm.llvm_version_info), tm.triple, llvm.get_host_cpu_name(),
             llvm.get_host_cpu_features().flatten())
    return "\0".join(parts).encode()


# Program.digest hashes every instruction in Python; a cache hit must cost well under a
# millisecond, so digests are remembered per live Program object.
_digests: dict[int, tuple[weakref.ref, str]] = {}


def _digest(prog: Program) -> str:
    hit = _digests.get(id(prog))
    if hit is not None and hit[0]() is prog:
        return hit[1]
    d = prog.digest
    key = id(prog)
    _digests[key] = (weakref.ref(prog, lambda _r: _digests.pop(key, None)), d)
    return d


def cache_key(prog: Program, helpers: str) -> str:
    h = hashlib.sha256(_build_tag())
    h.update(_digest(prog).encode() + b"\0" + helpers.encode())
    return h.hexdigest()


def cache_dir() -> Path | None:
    env = os.environ.get("STORD_JIT_CACHE")
    if env == "off":
        return None
    if env:
        return Path(env)
    return toolchain.cache_dir() / "jit"


_templates: OrderedDict[str, str] = OrderedDict()
_tlock = threading.Lock()   # the background O2 compiles translate too
TEMPLATE_ENTRIES = 32


def template_key(prog: Program, helpers: str) -> str:
    """The program without the bytes of its read-only maps: what the IR text depends on."""
    h = hashlib.sha256(_build_tag())
    h.update(helpers.encode() + b"\0" + encode(prog.insns))
    for m in prog.maps:
        ro = ModuleTranslator.is_readonly(m)
        h.update(repr((m.name, m.type, m.key_size, m.value_size, m.max_entries, m.flags,
                       ro)).encode())
        h.update(b"" if ro else (m.initial or b""))
    return h.hexdigest()


def build_ir(prog: Program, helpers: str, fresh: bool = False,
             const_params: bool = True) -> str:
    """The module text. Translation is the slow Python part and depends neither on the
    parameter values nor on the tier, so it is done once per program and helper set (a
    template kept in memory and on disk). The first tier (const_params=False) compiles it
    as it is: .rodata read from the instance's memory. For the O2 code each read-only map's
    accessor is swapped for one returning a constant global with this program's bytes
    (translate.rodata_items), so that the parameters fold."""
    key = template_key(prog, helpers)
    with _tlock:
        text = None if fresh else _templates.get(key)
    if text is None:
        raw = None if fresh else _disk_read(key, ".ll")
        if raw is not None:
            text = raw.decode()
        else:
            helper_set, _, variant = helpers.partition("/")
            text = str(ModuleTranslator(prog, helper_set, chunk=variant == "chunk").build())
        if raw is None:
            _disk_write(key, text.encode(), ".ll")
        with _tlock:
            _templates[key] = text
            while len(_templates) > TEMPLATE_ENTRIES:
                _templates.popitem(last=False)
    if const_params:
        for i, m in enumerate(prog.maps):
            if ModuleTranslator.is_readonly(m):
                blank, filled = rodata_text(prog, i)
                if blank not in text:
                    raise CompileError(f"jit: no .rodata accessor for map {i} in the template")
                text = text.replace(blank, filled, 1)
    return text


def optimise(ir_text: str, pipeline: str = "fast",
             parsing: Callable[[], None] | None = None) -> llvm.ModuleRef:
    """`parsing` is called just before LLVM parses the text (see compile_object)."""
    # each tier's own target machine: a loading thread's first tier and the background
    # thread's O2 compile run at once, and one TargetMachine must not serve two threads
    # (it caches subtargets lazily)
    tm = target_machine() if pipeline == "o2" else fast_target_machine()
    # a context of its own: the background O2 compiles run in other threads, and an
    # LLVMContext (llvmlite's global one by default) must not be shared between threads
    context = llvm.create_context()
    if parsing is not None:
        parsing()
    try:
        mod = llvm.parse_assembly(ir_text, context=context)
        mod.verify()
    except RuntimeError as e:
        raise CompileError(f"jit: LLVM rejected the translated program: {e}") from e
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=2))
    if pipeline == "o2":
        pb.getModulePassManager().run(mod, pb)
        return mod
    # The first tier (or the only one with STORD_JIT_PIPELINE=fast): the translator has
    # inlined the subprograms, hoisted invariant loads and keeps budget and status in a
    # local, so SROA (registers, and the eBPF stack, whose addresses are constants once
    # inlined), SCCP and CFG cleanup. With the -O0 back end this measured as fast as
    # 2x (SROA, instcombine, simplifycfg) in about 60% of the time; dropping SCCP or
    # simplifycfg halves the speed of the code.
    mpm = llvm.create_new_module_pass_manager()
    mpm.add_sroa_pass()
    mpm.add_sccp_pass()
    mpm.add_simplify_cfg_pass()
    mpm.run(mod, pb)
    return mod


def compile_object(prog: Program, helpers: str, pipeline: str = "fast",
                   validate: Callable[[], None] | None = None) -> bytes:
    """`pipeline` "o2": parameters folded, the full optimiser; "fast": the first tier, whose
    object does not depend on the parameter values (see get_compiled). `validate` (the
    program's checks, Python) runs on the checker thread while LLVM compiles on this one
    (LLVM releases the GIL); the object is returned only if they pass. Translating an
    invalid program ends in an exception or in code that is never used, so translating
    first only changes which error such a program gets: the validator's, always (checked
    on random near-valid programs in tests/test_validate.py)."""
    const = pipeline == "o2"
    try:
        text = build_ir(prog, helpers, const_params=const)
    except Exception:
        if validate is not None:
            validate()
        raise
    if validate is None:
        return _optimise_emit(prog, helpers, text, pipeline)
    checked: list[Future[None]] = []
    try:
        # The checks start when LLVM starts to parse (it keeps the GIL free for longer
        # than they take), not before: both are Python until then and would take turns.
        obj = _optimise_emit(prog, helpers, text, pipeline,
                             lambda: checked.append(_checker.call(validate)))
    except Exception:
        if checked:   # an invalid program: the validator's error says why
            checked[-1].result()
        else:
            validate()
        raise
    checked[-1].result()
    return obj


def _optimise_emit(prog: Program, helpers: str, text: str, pipeline: str,
                   parsing: Callable[[], None] | None = None) -> bytes:
    const = pipeline == "o2"
    try:
        mod = optimise(text, pipeline, parsing)
    except CompileError:   # a damaged template
        mod = optimise(build_ir(prog, helpers, fresh=True, const_params=const), pipeline)
    return (target_machine() if const else fast_target_machine()).emit_object(mod)


_lljit: llvm.LLJIT | None = None
_lljit_pid = 0
_inherited: list[Compiled] = []
_libraries = itertools.count()


def _jit() -> llvm.LLJIT:
    global _lljit, _lljit_pid
    if _lljit is None or _lljit_pid != os.getpid():
        # a forked worker must not reuse its parent's JIT (its threads did not survive)
        # JITLink: each object is one allocation, so the small code model's 32-bit offsets
        # between its sections always reach (see target_machine)
        _lljit = llvm.create_lljit_compiler(target_machine(), use_jit_link=True)
        _lljit_pid = os.getpid()
    return _lljit


def warm_up() -> None:
    """The once-per-process set-up, so that the first compile does not pay it: the target
    machines, the JIT, the background thread, libc's addresses, the build tag (~11 ms, mostly
    ctypes.util.find_library), and a two-instruction program taken through every stage
    (translate, parse, passes, -O0 emit, link) and run. That proves the JIT works here, and
    it takes LLVM's first-use costs (page faults in its code, tables built on first use:
    the first link of a process measured 0.6-0.9 ms, later ones 0.3-0.4) out of the first
    real load. Nothing is cached. JitEngine.probe runs it."""
    fast_target_machine()
    _jit()
    _background.submit(lambda: None)   # starts the background thread
    _checker.call(lambda: None).result()   # and the checks' one
    _libc_symbols()
    _build_tag()
    probe = Program("warm_up", "", [Insn(isa.ALU64 | isa.MOV | isa.K, 0, 0, 0, 42),
                                    Insn(isa.EXIT_OP)])
    text = str(ModuleTranslator(probe, "linux", chunk=True).build())   # (no template kept)
    code = _load("warm_up", fast_target_machine().emit_object(optimise(text)), 0.0, "compiled")
    env = L.Env()
    env.budget = 1
    if code.entry(ctypes.addressof(env), 0, 0) != 42 or env.status:
        raise CompileError("jit: the probe program returned a wrong result")


def _load(key: str, obj: bytes, seconds: float, source: str) -> Compiled:
    """Link the object into the process-wide ORC LLJIT as a new library; the returned
    resource tracker (kept by Compiled) frees the code when the last instance lets go."""
    jit = _jit()
    builder = llvm.JITLibraryBuilder().add_object_img(obj).export_symbol(ENTRY_NAME)
    for name, addr in _libc_symbols().items():
        builder.import_symbol(name, addr)
    tracker = builder.link(jit, f"prog{next(_libraries)}_{key[:16]}")
    addr = tracker[ENTRY_NAME]
    if not addr:
        raise CompileError("jit: compiled object has no entry point")
    return Compiled(key, ENTRY_TYPE(addr), tracker, seconds, source)


def _disk_read(key: str, suffix: str = ".o") -> bytes | None:
    d = cache_dir()
    if d is None:
        return None
    try:
        return (d / f"{key}{suffix}").read_bytes()
    except OSError:
        return None


def _disk_write(key: str, data: bytes, suffix: str = ".o") -> None:
    d = cache_dir()
    if d is not None:
        path = d / f"{key}{suffix}"
        _background.submit(lambda: _write_file(path, data))


def _write_file(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache directory only costs a recompile


T = TypeVar("T")


class _JobThread:
    """Jobs run in order on one daemon thread, started on first use (and again in a forked
    child, whose copy of the thread did not survive). A daemon thread, so that exit never
    waits on a long O2 compile for longer than wait_for_upgrades's timeout (atexit)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: deque[Callable[[], None]] = deque()
        self.cv = threading.Condition()
        self.running = 0   # jobs taken by the thread, not yet done
        self.thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        with self.cv:
            self.jobs.append(job)
            self.cv.notify_all()   # (waiters in wait() use the same condition)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run fn on the thread; its result or exception comes back through the future."""
        fut: Future[T] = Future()

        def job() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

        self.submit(job)
        return fut

    def wait(self, timeout: float | None) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: not self.jobs and not self.running, timeout)

    def _run(self) -> None:
        while True:
            with self.cv:
                self.cv.wait_for(lambda: self.jobs)
                job = self.jobs.popleft()
                self.running += 1
            try:
                job()
            except Exception:  # noqa: BLE001, S110 - a failed O2 compile leaves the fast code
                pass           # serving, a failed write a recompile later: nothing to report
            finally:
                with self.cv:
                    self.running -= 1
                    self.cv.notify_all()


# Background work: the O2 compiles and the cache file writes, in order. A load only queues
# them: a thread start and a load's two cache writes measured 1 ms and 0.8-2 ms of a ~50 ms
# cold compile; a write that never happens only costs a compile later. One thread also keeps
# concurrent loads from running several O2 compiles against the chunks of the queries.
_background = _JobThread("stord-jit-background")
# A load's checks of its program (validate.py, Python), run while LLVM compiles the
# translation on the loading thread (compile_object).
_checker = _JobThread("stord-jit-checks")


def get_compiled(prog: Program, helpers: str,
                 validate: Callable[[], None] | None = None, chunk: bool = False) -> Compiled:
    """The native code of `prog`: from memory, from disk, or compiled now. `validate` runs
    before anything is compiled, and is skipped on a cache hit, in memory or on disk (that
    exact program and helper set passed it already). `chunk`: the variant that only runs
    chunks (see ModuleTranslator)."""
    if chunk:
        helpers += "/chunk"   # a variant: its own template and object
    key = cache_key(prog, helpers)
    with _lock:
        if _lljit is not None and _lljit_pid != os.getpid():
            # forked: the parent's code is still mapped and usable, but releasing it here
            # would run the parent's JIT bookkeeping, so keep it and start afresh
            _inherited.extend(_memory.values())
            _inherited.extend(_fast.values())
            _memory.clear()
            _fast.clear()
        hit = _memory.get(key)
        if hit is not None:
            _memory.move_to_end(key)
            best = hit.slot.best or hit
            return Compiled(best.key, best.entry, best.engine, 0.0, "memory", best.tier,
                            hit.slot)
        # a disk hit skips validation too: an object is only ever written under this key
        # after that exact program and helper set passed it (validate.py is part of the key)
        c = _from_disk(key, ".o") if PIPELINE != "fast" else None
        if c is None and PIPELINE != "o2":
            c = _first_tier(prog, helpers, key, validate)
        if c is None:
            c = _compile(prog, helpers, "o2", key, ".o", validate)
        _memory[key] = c
        while len(_memory) > MEMORY_CACHE_ENTRIES:
            _memory.popitem(last=False)
        if PIPELINE == "tiered" and c.tier == "fast":
            _start_upgrade(prog, helpers, key, c.slot)
        return c


def _from_disk(key: str, suffix: str) -> Compiled | None:
    obj = _disk_read(key, suffix)
    if obj is None:
        return None
    try:
        return _load(key, obj, 0.0, "disk")
    except (RuntimeError, CompileError):
        return None   # a damaged cache file: compiled again


def _compile(prog: Program, helpers: str, pipeline: str, key: str, suffix: str,
             validate: Callable[[], None] | None) -> Compiled:
    """Validate, compile, link, and keep the object on disk under key + suffix."""
    t0 = time.perf_counter()
    obj = compile_object(prog, helpers, pipeline, validate)
    c = _load(key, obj, time.perf_counter() - t0, "compiled")
    _disk_write(key, obj, suffix)
    return c


# First-tier code by template key: its object reads the parameters from memory, so every
# parameter set of a program shares it (a new parameter set costs no LLVM work before its
# first chunk; only its O2 code is compiled, in the background).
_fast: OrderedDict[str, Compiled] = OrderedDict()


def _first_tier(prog: Program, helpers: str, key: str,
                validate: Callable[[], None] | None) -> Compiled:
    """Called with _lock held. Validation is skipped when the code exists: the template
    key covers everything validate() reads (instructions, map shapes; not the .rodata
    bytes), and validate.py is part of it."""
    fkey = template_key(prog, helpers)
    code = _fast.get(fkey)
    if code is not None:
        _fast.move_to_end(fkey)
        source, seconds = "memory", 0.0
    else:
        code = _from_disk(fkey, ".fast.o") or \
            _compile(prog, helpers, "fast", fkey, ".fast.o", validate)
        source, seconds = code.source, code.seconds
        _fast[fkey] = code
        while len(_fast) > MEMORY_CACHE_ENTRIES:
            _fast.popitem(last=False)
    return Compiled(key, code.entry, code.engine, seconds, source, "fast")


def _start_upgrade(prog: Program, helpers: str, key: str, slot: Slot) -> None:
    """Queue the O2 compile (LLVM releases the GIL: the chunks keep running on the fast code
    meanwhile); instances switch to it between chunks."""
    def work() -> None:   # (a failure leaves the fast code serving: see _run_jobs)
        t0 = time.perf_counter()
        obj = compile_object(prog, helpers, "o2")
        seconds = time.perf_counter() - t0
        with _lock:
            c = _load(key, obj, seconds, "compiled")
            c.slot = slot
            slot.best = c
            if key in _memory:
                _memory[key] = c
        _disk_write(key, obj, ".o")

    _background.submit(work)


def wait_for_upgrades(timeout: float | None = None) -> bool:
    """Wait for the queued O2 compiles and cache file writes (tests, benchmarks, interpreter
    exit). False when `timeout` seconds passed first."""
    return _background.wait(timeout)


def _after_fork_in_child() -> None:
    global _lock, _tlock, _background, _checker
    _lock = threading.Lock()   # a compile thread of the parent may have held them
    _tlock = threading.Lock()
    # the parent's threads did not survive; their jobs are the parent's to finish
    _background = _JobThread(_background.name)
    _checker = _JobThread(_checker.name)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(wait_for_upgrades, 10.0)


def clear_memory_cache() -> None:
    """Forget compiled code and translation templates kept in this process."""
    with _lock, _tlock:
        _memory.clear()
        _fast.clear()
        _templates.clear()
