"""Helpers and map operations emitted as LLVM IR next to the program (no Python per call).

Each helper is expanded inline at its call site, so constant arguments (the map handle from
the preceding lddw, the bpf_loop callback address) select the code at compile time and a
bpf_loop callback becomes a direct, inlinable call inside a native loop. Hash maps are
open-addressing tables over host buffers that engine.py allocates and reads back
(layout.py has the descriptor); one set of find/update/delete functions per map, specialised
for its key and value sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stord.engines import base
from stord.engines.jit import irtext as ir
from stord.engines.jit import layout as L
from stord.engines.jit.translate import (
    I1,
    I8,
    I32,
    I64,
    PTR,
    VOID,
    c64,
    map_handle,
)
from stord.errors import CompileError
from stord.program.model import MAP_ARRAY, MAP_HASH, MAP_PERCPU_ARRAY, MAP_PERCPU_HASH

if TYPE_CHECKING:
    from stord.engines.jit.translate import FunctionTranslator, ModuleTranslator

EINVAL, ENOENT, E2BIG, EEXIST, EPERM = 22, 2, 7, 17, 1
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
LOOP_MAX = 1 << 23          # the kernel's BPF_MAX_LOOPS
CLOCK_MONOTONIC = 1

LINUX_HELPERS = (1, 2, 3, 5, 6, 7, 8, 181, 189, 190)
CONFORMANCE_HELPERS = (0, 1, 2, 3, 4, 5)
BPF_F_LOCK = 4              # accepted and ignored, as in the interp
TRACE_MAX_LEN = 1024


def neg(errno: int) -> ir.Constant:
    return c64(-errno)


class Runtime:
    def __init__(self, mt: ModuleTranslator) -> None:
        self.mt = mt
        self.module = mt.module
        self.ids = LINUX_HELPERS if mt.helpers == "linux" else CONFORMANCE_HELPERS
        for m in mt.prog.maps:
            if m.type not in (MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_PERCPU_HASH) \
                    and not m.is_global_data:
                raise CompileError(f"map {m.name!r} has unsupported type {m.type}")
            if m.key_size <= 0 or m.value_size <= 0 or m.max_entries <= 0:
                raise CompileError(f"map {m.name!r}: key/value sizes and max_entries must "
                                   f"be > 0")
            if not mt.is_hash(m) and m.key_size != 4:
                raise CompileError(f"array map {m.name!r} has key size {m.key_size}, not 4")
        self.xlate = self._xlate()
        self._hash_fns: dict[int, tuple[ir.Function, ir.Function, ir.Function]] = {}
        self._ktime: ir.Function | None = None

    # -- ctx, meta and conformance memory --------------------------------------------------

    def _xlate(self) -> ir.Function:
        """ptr xlate(env, addr, size, write): the host address of [addr, addr + size) in
        whichever region other than the stack holds it, or null (a fault). Regions: each
        map's values (.rodata read-only), the chunk, ctx and meta (read-only) and the
        conformance memory. Out of line (noinline): the translator inlines the stack check
        and the one region check an access most likely needs."""
        fn = ir.Function(self.module, ir.FunctionType(PTR, [PTR, I64, I64, I64]), "xlate")
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        fn.attributes.add("cold")
        env, addr, size, write = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        null = ir.Constant(PTR, None)

        def field(off: int, typ: ir.Type) -> ir.Value:
            return b.load(b.gep(env, [c64(off)], source_etype=I8), typ=typ)

        def fits(d: ir.Value, span: ir.Value) -> ir.Value:
            return b.and_(b.icmp_unsigned("<=", size, span),
                          b.icmp_unsigned("<=", d, b.sub(span, size)))

        def region(ok: ir.Value, host: callable) -> None:
            hit = fn.append_basic_block()
            miss = fn.append_basic_block()
            b.cbranch(ok, hit, miss)
            b.position_at_end(hit)
            b.ret(host())
            b.position_at_end(miss)

        readable_only = b.icmp_unsigned("==", write, c64(0))
        for i, m in enumerate(self.mt.prog.maps):
            off = b.sub(addr, c64(base.map_base(i)))
            ok = fits(off, c64(self.mt.region_size(i)))
            if self.mt.is_readonly(m):
                ok = b.and_(ok, readable_only)
            if i in self.mt.rodata:
                fn_i = self.mt.rodata[i]
                region(ok, lambda fn_i=fn_i, off=off: b.gep(b.call(fn_i, [env]), [off],
                                                             source_etype=I8))
            else:
                def host(i: int = i, off: ir.Value = off) -> ir.Value:
                    maps = field(L.MAPS, PTR)
                    desc = b.gep(maps, [c64(i * L.MAPDESC_SIZE)], source_etype=I8)
                    values = b.load(b.gep(desc, [c64(L.M_VALUES)], source_etype=I8), typ=PTR)
                    return b.gep(values, [off], source_etype=I8)
                region(ok, host)
        for vbase, span_off, span_const, ptr_off, ro in (
                (base.DATA_BASE, L.DATA_LEN, None, L.DATA, True),
                (base.CTX_BASE, None, 24, L.CTX, True),
                (base.META_BASE, None, base.META_SIZE, L.META, True),
                (base.MEM_BASE, L.MEM_LEN, None, L.MEM, False)):
            d = b.sub(addr, c64(vbase))
            span = c64(span_const) if span_off is None else field(span_off, I64)
            ok = fits(d, span)
            if ro:
                ok = b.and_(ok, readable_only)
            region(ok, lambda d=d, ptr_off=ptr_off: b.gep(field(ptr_off, PTR), [d],
                                                          source_etype=I8))
        # meta and the chunk are one read-only region in the interp; a read that starts in
        # meta and ends in the chunk is assembled in the env's scratch buffer
        d = b.sub(addr, c64(base.META_BASE))
        span = b.add(field(L.DATA_LEN, I64), c64(base.META_SIZE))
        ok = b.and_(b.and_(fits(d, span), readable_only),
                    b.icmp_unsigned("<=", size, c64(L.SCRATCH_SIZE - base.META_SIZE)))
        hit = fn.append_basic_block()
        miss = fn.append_basic_block()
        b.cbranch(ok, hit, miss)
        b.position_at_end(hit)
        scratch = b.gep(env, [c64(L.SCRATCH)], source_etype=I8)
        self.memcpy(b, scratch, field(L.META, PTR), c64(base.META_SIZE))
        self.memcpy(b, b.gep(scratch, [c64(base.META_SIZE)], source_etype=I8),
                    field(L.DATA, PTR), b.sub(b.add(d, size), c64(base.META_SIZE)))
        b.ret(b.gep(scratch, [d], source_etype=I8))
        b.position_at_end(miss)
        b.ret(null)
        return fn

    # -- helper dispatch -----------------------------------------------------------------

    def helper(self, ft: FunctionTranslator, pc: int, hid: int) -> None:
        if hid not in self.ids:
            raise CompileError(f"helper {hid} at slot {pc} is not in the "
                               f"{self.mt.helpers!r} helper set")
        if self.mt.helpers == "conformance":
            emit = {0: self._gather_bytes, 1: self._memfrob, 2: self._smp_id, 3: self._sqrti,
                    4: self._strcmp_ext, 5: self._unwind}[hid]
            emit(ft, pc)
            return
        emit = {1: self._lookup, 2: self._update, 3: self._delete, 5: self._ktime_ns,
                6: self._trace_printk, 7: self._prandom, 8: self._smp_id, 181: self._loop,
                189: self._load_bytes, 190: self._store_bytes}[hid]
        emit(ft, pc)

    def helper_dynamic(self, ft: FunctionTranslator, pc: int, value: ir.Value) -> None:
        """callx: the helper id is in a register; dispatch over the helper set at run time."""
        b = ft.b
        done = ft.fn.append_basic_block(f"callx_done{pc}")
        bad = ft.fn.append_basic_block(f"callx_bad{pc}")
        sw = b.switch(value, bad)
        for hid in self.ids:
            bb = ft.fn.append_basic_block(f"callx{pc}_{hid}")
            sw.add_case(c64(hid), bb)
            b.position_at_end(bb)
            self.helper(ft, pc, hid)
            if not b.block.is_terminated:
                b.branch(done)
        b.position_at_end(bad)
        ft.fail(L.ST_BADCALL, pc, value)
        b.position_at_end(done)

    def _unwind(self, ft: FunctionTranslator, pc: int) -> None:
        """Conformance helper 5: r0 = r1, and the program stops when that is 0."""
        r1 = ft.reg(1)
        ft.set_reg(0, r1)
        ft.check(ft.b.icmp_unsigned("!=", r1, c64(0)), L.ST_UNWIND, pc)

    def _per_map(self, ft: FunctionTranslator, pc: int, handle: ir.Value,
                 body: callable) -> None:
        """Switch on the map handle; body(i) emits the case and returns r0 (or None if it
        ended the block). An unknown handle is a fault."""
        b = ft.b
        done = ft.fn.append_basic_block(f"map_done{pc}")
        bad = ft.fn.append_basic_block(f"map_bad{pc}")
        sw = b.switch(handle, bad)
        results: list[tuple[ir.Value, ir.Block]] = []
        for i in range(len(self.mt.prog.maps)):
            bb = ft.fn.append_basic_block(f"map{pc}_{i}")
            sw.add_case(c64(map_handle(i)), bb)
            b.position_at_end(bb)
            r0 = body(i)
            if r0 is not None:
                results.append((r0, b.block))
                b.branch(done)
        b.position_at_end(bad)
        ft.fail(L.ST_BADCALL, pc, handle)
        b.position_at_end(done)
        if results:
            phi = b.phi(I64)
            for v, blk in results:
                phi.add_incoming(v, blk)
            ft.set_reg(0, phi)
        else:
            b.unreachable()

    def _array_index(self, ft: FunctionTranslator, pc: int) -> ir.Value:
        p = ft.reg_ptr(pc, 2, 0, 4, False)
        v = ft.b.load(p, typ=I32, align=1)
        return ft.b.zext(v, I64)

    def _lookup(self, ft: FunctionTranslator, pc: int) -> None:
        b = ft.b

        def body(i: int) -> ir.Value:
            m = self.mt.prog.maps[i]
            vbase = c64(base.map_base(i))
            if self.mt.is_hash(m):
                keyp = ft.reg_ptr(pc, 2, 0, m.key_size, False)
                find, _, _ = self.hash_fns(i)
                pos = b.call(find, [ft.map_desc(i), keyp])
                slot = self._slot_at(b, ft.map_desc(i), pos)
                found = b.icmp_signed(">=", pos, c64(0))
                return b.select(found, b.add(vbase, b.mul(slot, c64(m.value_size))), c64(0))
            idx = self._array_index(ft, pc)
            ok = b.icmp_unsigned("<", idx, c64(m.max_entries))
            return b.select(ok, b.add(vbase, b.mul(idx, c64(m.value_size))), c64(0))

        self._per_map(ft, pc, ft.reg(1), body)

    def _slot_at(self, b: ir.IRBuilder, desc: ir.Value, pos: ir.Value) -> ir.Value:
        """slot = index[pos] - 1 (pos clamped to 0 so a miss reads a valid entry)."""
        index = b.load(b.gep(desc, [c64(L.M_INDEX)], source_etype=I8), typ=PTR)
        safe = b.select(b.icmp_signed(">=", pos, c64(0)), pos, c64(0))
        e = b.load(b.gep(index, [safe], source_etype=I32), typ=I32)
        return b.sub(b.zext(e, I64), c64(1))

    def _update(self, ft: FunctionTranslator, pc: int) -> None:
        b = ft.b

        def body(i: int) -> ir.Value:
            m = self.mt.prog.maps[i]
            flags = b.and_(ft.reg(4), c64(~BPF_F_LOCK))
            if self.mt.is_hash(m):
                keyp = ft.reg_ptr(pc, 2, 0, m.key_size, False)
                valp = ft.reg_ptr(pc, 3, 0, m.value_size, False)
                _, update, _ = self.hash_fns(i)
                return b.call(update, [ft.map_desc(i), keyp, valp, flags])
            idx = self._array_index(ft, pc)
            valp = ft.reg_ptr(pc, 3, 0, m.value_size, False)
            if self.mt.is_readonly(m):
                return neg(EPERM)
            bad_flags = b.icmp_unsigned(">", flags, c64(BPF_EXIST))
            too_big = b.icmp_unsigned(">=", idx, c64(m.max_entries))
            noexist = b.icmp_unsigned("==", flags, c64(BPF_NOEXIST))
            r0 = b.select(bad_flags, neg(EINVAL),
                          b.select(too_big, neg(E2BIG), b.select(noexist, neg(EEXIST), c64(0))))
            with b.if_then(b.icmp_unsigned("==", r0, c64(0))):
                desc = ft.map_desc(i)
                values = ft.load_inv(b.gep(desc, [c64(L.M_VALUES)], source_etype=I8), PTR)
                dst = b.gep(values, [b.mul(idx, c64(m.value_size))], source_etype=I8)
                self.memmove(b, dst, valp, c64(m.value_size))
            return r0

        self._per_map(ft, pc, ft.reg(1), body)

    def _delete(self, ft: FunctionTranslator, pc: int) -> None:
        b = ft.b

        def body(i: int) -> ir.Value:
            m = self.mt.prog.maps[i]
            if not self.mt.is_hash(m):
                ft.reg_ptr(pc, 2, 0, 4, False)
                return neg(EINVAL)
            keyp = ft.reg_ptr(pc, 2, 0, m.key_size, False)
            _, _, delete = self.hash_fns(i)
            return b.call(delete, [ft.map_desc(i), keyp])

        self._per_map(ft, pc, ft.reg(1), body)

    def _ktime_ns(self, ft: FunctionTranslator, pc: int) -> None:
        ft.set_reg(0, ft.b.call(self.ktime_fn(), []))

    def _trace_printk(self, ft: FunctionTranslator, pc: int) -> None:
        """bpf_trace_printk is a debugging aid, so it is the one helper that calls back into
        Python (engine.py formats exactly as the interp and keeps the lines). Programs that
        use it hand the host stack to that call, which costs them some optimisation."""
        b = ft.b
        fnty = ir.FunctionType(I64, [PTR, PTR] + [I64] * 7)
        fptr = ft.hoisted(("trace_fn",), lambda: ft.load_inv(ft.env_ptr(L.TRACE_FN), PTR))
        args = [ft.env, ft.stack, ft.depth] + [ft.reg(i) for i in range(1, 6)] + [c64(pc)]
        r0 = b.call(fptr, args, ftype=fnty)
        cache = ft._cached()
        st = ft.env_field(L.STATUS)
        bad = ft.fn.append_basic_block(f"printk_fault{pc}")
        cont = ft.fn.append_basic_block(f"printk_ok{pc}")
        b.cbranch(b.icmp_unsigned("==", st, c64(0)), cont, bad)
        b.position_at_end(bad)   # the callback recorded a fault: move it to the ctl slot
        b.store(st, b.gep(ft.ctl, [c64(8)], source_etype=I8))
        b.store(c64(0), ft.env_ptr(L.STATUS))
        ft.leave(c64(0))
        b.position_at_end(cont)
        ft.carry_cache(cache)
        ft.set_reg(0, r0)

    def _prandom(self, ft: FunctionTranslator, pc: int) -> None:
        b = ft.b
        p = ft.env_ptr(L.RNG)
        x = b.load(p, typ=I64)
        x = b.xor(x, b.shl(x, c64(13)))
        x = b.xor(x, b.lshr(x, c64(7)))
        x = b.xor(x, b.shl(x, c64(17)))
        b.store(x, p)
        ft.set_reg(0, b.and_(x, c64(0xFFFF_FFFF)))

    def _smp_id(self, ft: FunctionTranslator, pc: int) -> None:
        ft.set_reg(0, c64(0))

    def _store_bytes(self, ft: FunctionTranslator, pc: int) -> None:
        ft.fail(L.ST_STORE_BYTES, pc)

    def _load_bytes(self, ft: FunctionTranslator, pc: int) -> None:
        """bpf_xdp_load_bytes(ctx, offset, buf, len): copy from the chunk; -EINVAL past it."""
        b = ft.b
        ctx = ft.reg(1)
        ft.check(b.icmp_unsigned("==", ctx, c64(base.CTX_BASE)), L.ST_BADCALL, pc, ctx)
        off = b.and_(ft.reg(2), c64(0xFFFF_FFFF))
        n = b.and_(ft.reg(4), c64(0xFFFF_FFFF))
        dlen = ft.env_field(L.DATA_LEN, invariant=True)
        ok = ft.fits(off, dlen, n)
        # the range is checked before the buffer, and an empty copy checks nothing
        with b.if_then(b.and_(ok, b.icmp_unsigned("!=", n, c64(0))), likely=True):
            bufp = ft.reg_ptr(pc, 3, 0, n, True)
            data = ft.env_field(L.DATA, PTR, invariant=True)
            self.memcpy(b, bufp, b.gep(data, [off], source_etype=I8), n)
        ft.set_reg(0, b.select(ok, c64(0), neg(EINVAL)))

    def _loop(self, ft: FunctionTranslator, pc: int) -> None:
        """bpf_loop(nr, callback, ctx, flags): a native loop calling the callback directly."""
        b = ft.b
        nr = b.and_(ft.reg(1), c64(0xFFFF_FFFF))
        fnv, ctx, flags = ft.reg(2), ft.reg(3), ft.reg(4)
        done = ft.fn.append_basic_block(f"loop_done{pc}")
        results: list[tuple[ir.Value, ir.Block]] = []
        bad_flags = b.icmp_unsigned("!=", flags, c64(0))
        too_many = b.icmp_unsigned(">", nr, c64(LOOP_MAX))
        results.append((b.select(bad_flags, neg(EINVAL), neg(E2BIG)), b.block))
        run = ft.fn.append_basic_block(f"loop_run{pc}")
        b.cbranch(b.or_(bad_flags, too_many), done, run)
        b.position_at_end(run)
        bad = ft.fn.append_basic_block(f"loop_badfn{pc}")
        sw = b.switch(fnv, bad)
        # callbacks: subprograms whose address the program takes (lddw PSEUDO_FUNC), as the
        # kernel requires; the interp would also accept FUNC_BASE + another function start
        # computed by arithmetic, which here faults (not worth a real call at every site)
        targets = self.mt.callbacks
        if fnv.constant is not None:
            # the usual case (lddw right before the call): only that callback's loop, so
            # the code of the others is not emitted (and nested loops stay one copy each)
            targets = [t for t in targets if base.FUNC_BASE + t == fnv.constant]
        for target in targets:
            head = ft.fn.append_basic_block(f"loop{pc}_{target}")
            sw.add_case(c64(base.FUNC_BASE + target), head)
            b.position_at_end(head)
            # the iterations are charged to the budget up front (the calls then charge
            # nothing, which keeps the per-byte loop free of a budget test), as many as
            # the budget allows; a break refunds the ones it skips. Running out is the
            # same BudgetExceeded at the same iteration as charging one by one, except
            # that a callback's own charges see the budget less the iterations to come.
            left = b.load(ft.ctl, typ=I64)
            prepaid = b.select(b.icmp_unsigned("<", nr, left), nr, left)
            b.store(b.sub(left, prepaid), ft.ctl)
            pre = b.block
            cond_bb = ft.fn.append_basic_block(f"loop{pc}_{target}_cond")
            b.branch(cond_bb)
            b.position_at_end(cond_bb)
            i = b.phi(I64, name="i")
            i.add_incoming(c64(0), pre)
            body = ft.fn.append_basic_block(f"loop{pc}_{target}_body")
            end = ft.fn.append_basic_block(f"loop{pc}_{target}_end")
            b.cbranch(b.icmp_unsigned(">=", i, prepaid), end, body)
            b.position_at_end(end)
            ft.check(b.icmp_unsigned(">=", prepaid, nr), L.ST_BUDGET, pc)   # ran out
            results.append((nr, b.block))
            b.branch(done)
            b.position_at_end(body)
            zero = c64(0)
            r0 = ft.call_sub(pc, target, [i, ctx, zero, zero, zero], charge=False,
                             arg_kinds=(None, ft.kind(pc, 3), ("c", 0), ("c", 0), ("c", 0)))
            nxt = b.add(i, c64(1))
            brk = ft.fn.append_basic_block(f"loop{pc}_{target}_break")
            latch = b.block
            b.cbranch(b.icmp_unsigned("!=", r0, zero), brk, cond_bb)
            i.add_incoming(nxt, latch)
            b.position_at_end(brk)
            b.store(b.add(b.load(ft.ctl, typ=I64), b.sub(prepaid, nxt)), ft.ctl)
            results.append((nxt, b.block))
            b.branch(done)
        b.position_at_end(bad)
        ft.fail(L.ST_BADCALL, pc, fnv)
        b.position_at_end(done)
        phi = b.phi(I64)
        for v, blk in results:
            phi.add_incoming(v, blk)
        ft.set_reg(0, phi)

    # -- the conformance plugin's helpers 0-4 ---------------------------------------------

    def _gather_bytes(self, ft: FunctionTranslator, pc: int) -> None:
        b = ft.b
        r = c64(0)
        for reg, shift in ((1, 32), (2, 24), (3, 16), (4, 8), (5, 0)):
            r = b.or_(r, b.shl(b.and_(ft.reg(reg), c64(0xFF)), c64(shift)))
        ft.set_reg(0, r)

    def _memfrob(self, ft: FunctionTranslator, pc: int) -> None:
        """memfrob(ptr, len): xor each byte with 42 in place; returns 0."""
        b = ft.b
        n = ft.reg(2)
        with b.if_then(b.icmp_unsigned("!=", n, c64(0))):
            p = ft.reg_ptr(pc, 1, 0, n, True)
            self._byte_loop(ft, n, lambda i: self._xor42(b, b.gep(p, [i], source_etype=I8)))
        ft.set_reg(0, c64(0))

    @staticmethod
    def _xor42(b: ir.IRBuilder, q: ir.Value) -> None:
        b.store(b.xor(b.load(q, typ=I8), ir.Constant(I8, 42)), q)

    def _byte_loop(self, ft: FunctionTranslator, n: ir.Value, body: callable) -> None:
        """for (i = 0; i < n; i++) body(i), n > 0."""
        b = ft.b
        pre = b.block
        loop = ft.fn.append_basic_block()
        out = ft.fn.append_basic_block()
        b.branch(loop)
        b.position_at_end(loop)
        i = b.phi(I64)
        i.add_incoming(c64(0), pre)
        body(i)
        nxt = b.add(i, c64(1))
        i.add_incoming(nxt, b.block)
        b.cbranch(b.icmp_unsigned("<", nxt, n), loop, out)
        b.position_at_end(out)

    def _sqrti(self, ft: FunctionTranslator, pc: int) -> None:
        ft.set_reg(0, ft.b.call(self.isqrt_fn(), [ft.reg(1)]))

    def _strcmp_ext(self, ft: FunctionTranslator, pc: int) -> None:
        """Compares two C strings (at most 1024 bytes each, every byte read is checked):
        0 when equal, 1 when the first is greater, -1 when smaller (as Python's bytes)."""
        b = ft.b
        la = self._cstring_len(ft, ft.reg(1), pc)
        lb = self._cstring_len(ft, ft.reg(2), pc)
        pa = ft.host_ptr(ft.reg(1), la, False, pc)
        pb = ft.host_ptr(ft.reg(2), lb, False, pc)
        ft.set_reg(0, b.call(self.bytes_cmp_fn(), [pa, la, pb, lb]))

    def _cstring_len(self, ft: FunctionTranslator, addr: ir.Value, pc: int) -> ir.Value:
        """Bytes before the NUL at addr (at most TRACE_MAX_LEN), checking each byte read."""
        b = ft.b
        pre = b.block
        loop = ft.fn.append_basic_block()
        out = ft.fn.append_basic_block()
        b.branch(loop)
        b.position_at_end(loop)
        i = b.phi(I64)
        i.add_incoming(c64(0), pre)
        full = b.icmp_unsigned(">=", i, c64(TRACE_MAX_LEN))
        body = ft.fn.append_basic_block()
        from_full = b.block
        b.cbranch(full, out, body)
        b.position_at_end(body)
        ch = b.load(ft.host_ptr(b.add(addr, i), 1, False, pc), typ=I8)
        nxt = b.add(i, c64(1))
        i.add_incoming(nxt, b.block)
        from_nul = b.block
        b.cbranch(b.icmp_unsigned("==", ch, ir.Constant(I8, 0)), out, loop)
        b.position_at_end(out)
        n = b.phi(I64)
        n.add_incoming(i, from_full)
        n.add_incoming(i, from_nul)
        return n

    def isqrt_fn(self) -> ir.Function:
        fn = self.module.globals.get("isqrt")
        if fn is not None:
            return fn
        fn = ir.Function(self.module, ir.FunctionType(I64, [I64]), "isqrt")
        fn.linkage = "internal"
        x = fn.args[0]
        b = ir.IRBuilder(fn.append_basic_block())
        dbl = ir.DoubleType()
        sqrt = self.mt.intrinsic("llvm.sqrt.f64", dbl, [dbl])
        est = b.fptoui(b.call(sqrt, [b.uitofp(x, dbl)]), I64)
        est = b.select(b.icmp_unsigned(">", est, c64(0xFFFF_FFFF)), c64(0xFFFF_FFFF), est)
        entry = b.block
        down = fn.append_basic_block("down")
        up = fn.append_basic_block("up")
        b.branch(down)
        # while s > 0 and s > x / s: s -= 1
        b.position_at_end(down)
        s = b.phi(I64)
        s.add_incoming(est, entry)
        too_big = b.and_(b.icmp_unsigned("!=", s, c64(0)),
                         b.icmp_unsigned(">", s, b.udiv(x, b.select(
                             b.icmp_unsigned("==", s, c64(0)), c64(1), s))))
        dec = fn.append_basic_block("dec")
        b.cbranch(too_big, dec, up)
        b.position_at_end(dec)
        s.add_incoming(b.sub(s, c64(1)), dec)
        b.branch(down)
        # while s + 1 <= x / (s + 1): s += 1
        b.position_at_end(up)
        t = b.phi(I64)
        t.add_incoming(s, down)
        t1 = b.add(t, c64(1))
        inc = fn.append_basic_block("inc")
        done = fn.append_basic_block("done")
        b.cbranch(b.icmp_unsigned("<=", t1, b.udiv(x, t1)), inc, done)
        b.position_at_end(inc)
        t.add_incoming(t1, inc)
        b.branch(up)
        b.position_at_end(done)
        b.ret(t)
        return fn

    def bytes_cmp_fn(self) -> ir.Function:
        """i64 cmp(a, la, b, lb): -1, 0 or 1 by unsigned lexicographic order."""
        fn = self.module.globals.get("bytes_cmp")
        if fn is not None:
            return fn
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR, I64, PTR, I64]), "bytes_cmp")
        fn.linkage = "internal"
        pa, la, pb, lb = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        n = b.select(b.icmp_unsigned("<", la, lb), la, lb)
        entry = b.block
        loop = fn.append_basic_block("loop")
        body = fn.append_basic_block("body")
        tail = fn.append_basic_block("tail")
        b.branch(loop)
        b.position_at_end(loop)
        i = b.phi(I64)
        i.add_incoming(c64(0), entry)
        b.cbranch(b.icmp_unsigned("<", i, n), body, tail)
        b.position_at_end(body)
        ca = b.load(b.gep(pa, [i], source_etype=I8), typ=I8)
        cb = b.load(b.gep(pb, [i], source_etype=I8), typ=I8)
        differ = fn.append_basic_block("differ")
        same = fn.append_basic_block("same")
        b.cbranch(b.icmp_unsigned("!=", ca, cb), differ, same)
        b.position_at_end(differ)
        b.ret(b.select(b.icmp_unsigned(">", ca, cb), c64(1), c64(-1)))
        b.position_at_end(same)
        i.add_incoming(b.add(i, c64(1)), same)
        b.branch(loop)
        b.position_at_end(tail)
        b.ret(b.select(b.icmp_unsigned("==", la, lb), c64(0),
                       b.select(b.icmp_unsigned(">", la, lb), c64(1), c64(-1))))
        return fn

    # -- intrinsics and libc -------------------------------------------------------------

    def memcpy(self, b: ir.IRBuilder, dst: ir.Value, src: ir.Value, n: ir.Value) -> None:
        fn = self.mt.intrinsic("llvm.memcpy.p0.p0.i64", VOID, [PTR, PTR, I64, I1])
        b.call(fn, [dst, src, n, ir.Constant(I1, 0)])

    def memmove(self, b: ir.IRBuilder, dst: ir.Value, src: ir.Value, n: ir.Value) -> None:
        fn = self.mt.intrinsic("llvm.memmove.p0.p0.i64", VOID, [PTR, PTR, I64, I1])
        b.call(fn, [dst, src, n, ir.Constant(I1, 0)])

    def ktime_fn(self) -> ir.Function:
        if self._ktime is None:
            cg = self.mt.intrinsic("clock_gettime", I32, [I32, PTR])
            fn = ir.Function(self.module, ir.FunctionType(I64, []), "ktime_ns")
            fn.linkage = "internal"
            b = ir.IRBuilder(fn.append_basic_block())
            ts = b.alloca(ir.ArrayType(I64, 2))
            b.call(cg, [ir.Constant(I32, CLOCK_MONOTONIC), ts])
            sec = b.load(ts, typ=I64)
            nsec = b.load(b.gep(ts, [c64(8)], source_etype=I8), typ=I64)
            b.ret(b.add(b.mul(sec, c64(1_000_000_000)), nsec))
            self._ktime = fn
        return self._ktime

    # -- hash maps -----------------------------------------------------------------------

    def hash_fns(self, i: int) -> tuple[ir.Function, ir.Function, ir.Function]:
        fns = self._hash_fns.get(i)
        if fns is None:
            fns = self._hash_fns[i] = HashMapIR(self, i).build()
        return fns


def _chunks(size: int) -> list[tuple[int, int]]:
    """(offset, width) pieces covering `size` bytes with 8/4/2/1-byte loads."""
    out, off = [], 0
    for w in (8, 4, 2, 1):
        while size - off >= w:
            out.append((off, w))
            off += w
    return out


class HashMapIR:
    """find/update/delete for one hash map, specialised for its key and value sizes."""

    def __init__(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        self.m = rt.mt.prog.maps[index]
        self.index = index
        self.cap = L.index_capacity(self.m.max_entries)
        self.module = rt.module

    def build(self) -> tuple[ir.Function, ir.Function, ir.Function]:
        self.hash = self._hash()
        self.keyeq = self._keyeq()
        find = self._find()
        return find, self._update(find), self._delete(find)

    def _fn(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ret, args), f"{name}_{self.index}")
        fn.linkage = "internal"
        return fn

    @staticmethod
    def _field(b: ir.IRBuilder, desc: ir.Value, off: int, typ: ir.Type) -> ir.Value:
        return b.load(b.gep(desc, [c64(off)], source_etype=I8), typ=typ)

    def _hash(self) -> ir.Function:
        fn = self._fn("hkey", I64, [PTR])
        b = ir.IRBuilder(fn.append_basic_block())
        h = c64(0xCBF29CE484222325)
        for off, w in _chunks(self.m.key_size):
            v = b.load(b.gep(fn.args[0], [c64(off)], source_etype=I8), typ=ir.IntType(w * 8),
                       align=1)
            h = b.mul(b.xor(h, b.zext(v, I64) if w < 8 else v), c64(0x100000001B3))
        h = b.xor(h, b.lshr(h, c64(29)))
        h = b.mul(h, c64(0xBF58476D1CE4E5B9))
        h = b.xor(h, b.lshr(h, c64(32)))
        b.ret(h)
        return fn

    def _keyeq(self) -> ir.Function:
        fn = self._fn("hkeyeq", I1, [PTR, PTR])
        b = ir.IRBuilder(fn.append_basic_block())
        acc = c64(0)
        for off, w in _chunks(self.m.key_size):
            t = ir.IntType(w * 8)
            x = b.load(b.gep(fn.args[0], [c64(off)], source_etype=I8), typ=t, align=1)
            y = b.load(b.gep(fn.args[1], [c64(off)], source_etype=I8), typ=t, align=1)
            d = b.xor(x, y)
            acc = b.or_(acc, b.zext(d, I64) if w < 8 else d)
        b.ret(b.icmp_unsigned("==", acc, c64(0)))
        return fn

    def _find(self) -> ir.Function:
        """i64 find(desc, key): position in the index table, or -1."""
        fn = self._fn("hfind", I64, [PTR, PTR])
        desc, key = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        mask = c64(self.cap - 1)
        index = self._field(b, desc, L.M_INDEX, PTR)
        keys = self._field(b, desc, L.M_KEYS, PTR)
        start = b.and_(b.call(self.hash, [key]), mask)
        entry = b.block
        loop = fn.append_basic_block("probe")
        b.branch(loop)
        b.position_at_end(loop)
        pos = b.phi(I64)
        n = b.phi(I64)
        pos.add_incoming(start, entry)
        n.add_incoming(c64(0), entry)
        e = b.load(b.gep(index, [pos], source_etype=I32), typ=I32)
        miss = fn.append_basic_block("miss")
        occupied = fn.append_basic_block("occupied")
        nxt = fn.append_basic_block("next")
        sw = b.switch(e, occupied)
        sw.add_case(ir.Constant(I32, 0), miss)
        sw.add_case(ir.Constant(I32, 0xFFFF_FFFF), nxt)
        b.position_at_end(occupied)
        slot = b.sub(b.zext(e, I64), c64(1))
        kp = b.gep(keys, [b.mul(slot, c64(self.m.key_size))], source_etype=I8)
        hit = fn.append_basic_block("hit")
        b.cbranch(b.call(self.keyeq, [kp, key]), hit, nxt)
        b.position_at_end(hit)
        b.ret(pos)
        b.position_at_end(nxt)
        n1 = b.add(n, c64(1))
        pos1 = b.and_(b.add(pos, c64(1)), mask)
        pos.add_incoming(pos1, nxt)
        n.add_incoming(n1, nxt)
        b.cbranch(b.icmp_unsigned("<", n1, c64(self.cap)), loop, miss)
        b.position_at_end(miss)
        b.ret(c64(-1))
        return fn

    def _update(self, find: ir.Function) -> ir.Function:
        """i64 update(desc, key, value, flags): 0 or -errno, as bpf_map_update_elem."""
        m = self.m
        fn = self._fn("hupdate", I64, [PTR, PTR, PTR, I64])
        desc, key, value, flags = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        with b.if_then(b.icmp_unsigned(">", flags, c64(BPF_EXIST)), likely=False):
            b.ret(neg(EINVAL))
        pos = b.call(find, [desc, key])
        values = self._field(b, desc, L.M_VALUES, PTR)
        index = self._field(b, desc, L.M_INDEX, PTR)
        found = b.icmp_signed(">=", pos, c64(0))
        with b.if_then(found):
            with b.if_then(b.icmp_unsigned("==", flags, c64(BPF_NOEXIST))):
                b.ret(neg(EEXIST))
            e = b.load(b.gep(index, [pos], source_etype=I32), typ=I32)
            slot = b.sub(b.zext(e, I64), c64(1))
            dst = b.gep(values, [b.mul(slot, c64(m.value_size))], source_etype=I8)
            self.rt.memmove(b, dst, value, c64(m.value_size))
            b.ret(c64(0))
        with b.if_then(b.icmp_unsigned("==", flags, c64(BPF_EXIST))):
            b.ret(neg(ENOENT))
        count_p = b.gep(desc, [c64(L.M_COUNT)], source_etype=I8)
        count = b.load(count_p, typ=I64)
        with b.if_then(b.icmp_unsigned(">=", count, c64(m.max_entries))):
            b.ret(neg(E2BIG))
        # a slot: the most recently freed one, else the next never-used one
        nfree_p = b.gep(desc, [c64(L.M_NFREE)], source_etype=I8)
        next_p = b.gep(desc, [c64(L.M_NEXT)], source_etype=I8)
        nfree = b.load(nfree_p, typ=I64)
        has_free = b.icmp_unsigned("!=", nfree, c64(0))
        with b.if_else(has_free) as (then, other):
            with then:
                free = self._field(b, desc, L.M_FREE, PTR)
                top = b.sub(nfree, c64(1))
                s_free = b.zext(b.load(b.gep(free, [top], source_etype=I32), typ=I32), I64)
                b.store(top, nfree_p)
                bb_free = b.block
            with other:
                nxt = b.load(next_p, typ=I64)
                b.store(b.add(nxt, c64(1)), next_p)
                bb_next = b.block
        slot = b.phi(I64)
        slot.add_incoming(s_free, bb_free)
        slot.add_incoming(nxt, bb_next)
        keys = self._field(b, desc, L.M_KEYS, PTR)
        used = self._field(b, desc, L.M_USED, PTR)
        self.rt.memmove(b, b.gep(keys, [b.mul(slot, c64(m.key_size))], source_etype=I8), key,
                        c64(m.key_size))
        self.rt.memmove(b, b.gep(values, [b.mul(slot, c64(m.value_size))], source_etype=I8),
                        value, c64(m.value_size))
        b.store(ir.Constant(I8, 1), b.gep(used, [slot], source_etype=I8))
        b.store(b.add(count, c64(1)), count_p)
        # place it at the first empty or deleted entry of its probe sequence
        mask = c64(self.cap - 1)
        start = b.and_(b.call(self.hash, [key]), mask)
        entry = b.block
        loop = fn.append_basic_block("place")
        b.branch(loop)
        b.position_at_end(loop)
        p = b.phi(I64)
        p.add_incoming(start, entry)
        ep = b.gep(index, [p], source_etype=I32)
        e = b.load(ep, typ=I32)
        free_entry = b.or_(b.icmp_unsigned("==", e, ir.Constant(I32, 0)),
                           b.icmp_unsigned("==", e, ir.Constant(I32, 0xFFFF_FFFF)))
        put = fn.append_basic_block("put")
        step = fn.append_basic_block("step")
        b.cbranch(free_entry, put, step)
        b.position_at_end(step)
        p.add_incoming(b.and_(b.add(p, c64(1)), mask), step)
        b.branch(loop)
        b.position_at_end(put)
        b.store(b.trunc(b.add(slot, c64(1)), I32), ep)
        b.ret(c64(0))
        return fn

    def _delete(self, find: ir.Function) -> ir.Function:
        fn = self._fn("hdelete", I64, [PTR, PTR])
        desc, key = fn.args
        b = ir.IRBuilder(fn.append_basic_block())
        pos = b.call(find, [desc, key])
        with b.if_then(b.icmp_signed("<", pos, c64(0))):
            b.ret(neg(ENOENT))
        index = self._field(b, desc, L.M_INDEX, PTR)
        ep = b.gep(index, [pos], source_etype=I32)
        slot = b.zext(b.sub(b.load(ep, typ=I32), ir.Constant(I32, 1)), I64)
        b.store(ir.Constant(I32, 0xFFFF_FFFF), ep)
        used = self._field(b, desc, L.M_USED, PTR)
        b.store(ir.Constant(I8, 0), b.gep(used, [slot], source_etype=I8))
        nfree_p = b.gep(desc, [c64(L.M_NFREE)], source_etype=I8)
        nfree = b.load(nfree_p, typ=I64)
        free = self._field(b, desc, L.M_FREE, PTR)
        b.store(b.trunc(slot, I32), b.gep(free, [nfree], source_etype=I32))
        b.store(b.add(nfree, c64(1)), nfree_p)
        count_p = b.gep(desc, [c64(L.M_COUNT)], source_etype=I8)
        b.store(b.sub(b.load(count_p, typ=I64), c64(1)), count_p)
        b.ret(c64(0))
        return fn
