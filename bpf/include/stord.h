/* stord.h: the API stord programs are written against (see bpf/README.md, the contract).
 *
 * A stord program is an XDP program, `SEC("xdp") int f(struct xdp_md *ctx)`, called once per
 * chunk of a record-aligned byte range of a file, in file order. It keeps its aggregate in
 * global variables (its state); reduce merges two states by the BTF tags below.
 *
 * Only <linux/bpf.h> and <bpf/bpf_helpers.h> (libbpf-dev) are needed. Build with
 *   clang -O2 -g -target bpf -mcpu=v3 -Ibpf/include -c prog.c -o prog.o
 *
 * Define STORD_CSV before including this header to get the CSV record scanner: the program
 * then defines stord_csv_record() (called once per record) and returns stord_csv_main(ctx).
 */
#ifndef STORD_H
#define STORD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* ---- context ------------------------------------------------------------------------ */

/* At ctx->data_meta (16 bytes before ctx->data). */
struct stord_meta {
	__u64 offset; /* file offset of the chunk's first byte */
	__u32 flags;  /* STORD_LAST: the range ends with this chunk (which may be empty) */
	__u32 pad;
};
#define STORD_LAST 1u

struct stord_chunk {
	__u64 offset;
	__u32 len;
	__u32 last;
};

/* Verdicts. */
#define STORD_KEEP XDP_PASS    /* keep: the chunk is copied to the reader (hook engine) */
#define STORD_SKIP XDP_DROP    /* skip the copy: the answer is the state */
#define STORD_ERROR XDP_ABORTED /* the query fails */

/* Reads the chunk description; -1 when the metadata is missing (then return STORD_ERROR). */
static __always_inline int stord_chunk(struct xdp_md *ctx, struct stord_chunk *ch)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct stord_meta *m = (void *)(long)ctx->data_meta;

	if ((void *)(m + 1) > data)
		return -1;
	ch->offset = m->offset;
	ch->last = m->flags & STORD_LAST;
	ch->len = (__u32)(data_end - data);
	return 0;
}

/* ---- parameters and state ------------------------------------------------------------ */

/* A parameter: a `const volatile` global in .rodata that the caller sets before load. */
#define STORD_PARAM(type, name, dflt) const volatile type name = dflt

/* Reduce tags, on a global variable or a struct member. Untagged integers are summed. */
#define STORD_TAG(op) __attribute__((btf_decl_tag("stord:" op)))
#define STORD_SUM STORD_TAG("sum")
#define STORD_MIN STORD_TAG("min")
#define STORD_MAX STORD_TAG("max")
#define STORD_OR STORD_TAG("or")
#define STORD_AND STORD_TAG("and")
/* Parse state that carries between chunks of one range; not part of the result. */
#define STORD_SCRATCH STORD_TAG("scratch")

#define STORD_S64_MAX 0x7fffffffffffffffLL
#define STORD_S64_MIN (-STORD_S64_MAX - 1)

/* ---- reading the chunk: a loop over a window buffer -------------------------------------
 * The kernel verifier refuses packet access at an unbounded offset, and chunks are up to
 * 1 MiB in userspace. So a program walks the chunk with bpf_loop and reads it from a global
 * buffer that bpf_xdp_load_bytes fills window by window (a memcpy in the userspace
 * engines): grep one callback per byte through stord_byte(), the CSV scanner one callback
 * per byte that matters (its "special" bytes, found a word of 8 bytes at a time).
 * Why callbacks rather than a C loop over the window: the verifier checks a bpf_loop
 * callback once, but walks a bounded C loop iteration by iteration, path by path
 * (a 4096-byte window of a CSV state machine is far past its 1M-instruction limit). The
 * jit runs bpf_loop as a native loop with the callback inlined, and the loop state the
 * callback keeps in its context struct (on the caller's stack) becomes registers. */
#ifndef STORD_WINDOW
#define STORD_WINDOW 4096
#endif
#define STORD_MAX_CHUNK (1u << 23) /* bpf_loop's limit on iterations */

/* The window, then room for a byte after it (the CSV walk's end mark) and for a word (8
 * bytes) loaded at any index up to it. Indexes into the walk's part are masked with
 * STORD_BUF_MASK (for the verifier: the bound is the mask's). */
#define STORD_BUF_MASK (2 * STORD_WINDOW - 1)
__u8 stord_buf[2 * STORD_WINDOW + 8] STORD_SCRATCH;

/* Always 0, but the kernel verifier cannot know it (global data is not tracked). The
 * verifier keeps apart states whose registers or stack slots hold different constants, and
 * a per-byte state machine that sets its column to 0 at every newline would make it verify
 * the callback once per constant combination. Resetting loop state to `stord_zero` instead
 * of a literal 0 keeps those values "unknown", so the states match. One load per reset. */
__u32 stord_zero STORD_SCRATCH;

/* x passed through the global mem: the kernel verifier does not track values in global
 * memory, so afterwards it knows nothing of x and cannot keep apart loop iterations that
 * differ only in x (the jit's LLVM forwards the store to the load: one store remains). */
#define STORD_FORGET(mem, x) ((mem) = (x), (x) = *(volatile __typeof__(mem) *)&(mem))

/* Window widx of a chunk of len bytes into stord_buf; returns its length (1..STORD_WINDOW),
 * or -1 (past the end, or the helper failed: return STORD_ERROR). For the two-level walk:
 * an outer bpf_loop over the windows calls this, then an inner bpf_loop over the window,
 * with no window test per step (the CSV scanner below; the jit runs both loops natively,
 * nested). */
static __always_inline int stord_window(struct xdp_md *ctx, __u32 widx, __u32 len)
{
	__u32 off = widx * STORD_WINDOW, n;

	if (off >= len)
		return -1;
	n = len - off;
	if (n > STORD_WINDOW)
		n = STORD_WINDOW;
	if (n < 1) /* for the verifier: the helper's size is in [1, STORD_WINDOW] */
		return -1;
	if (bpf_xdp_load_bytes(ctx, off, stord_buf, n))
		return -1;
	return n;
}

/* Byte idx (< len) of the chunk; loads the next window when idx starts one. -1: the
 * helper failed (return STORD_ERROR). */
static __always_inline int stord_byte(struct xdp_md *ctx, __u32 idx, __u32 len)
{
	__u32 k = idx & (STORD_WINDOW - 1);

	if (k == 0 && stord_window(ctx, idx / STORD_WINDOW, len) < 0)
		return -1;
	return stord_buf[k];
}

/* Number of windows of a chunk of len bytes. */
#define STORD_WINDOWS(len) (((len) + STORD_WINDOW - 1) / STORD_WINDOW)

/* ---- decimal numbers as fixed-point integers -------------------------------------------
 * "[+-]digits[.digits]" (either digit run may be empty, not both) becomes value * 10^scale
 * in an __s64; digits beyond the scale are dropped (truncation toward zero, like the C
 * baseline in bench/). No floating point.
 * Feed the field's bytes one by one from a zeroed state, then stord_num_end().
 *
 * The first 19 digits, integer or fraction, go into the accumulator with no test but their
 * count (10^19 - 1 fits a __u64): the state word counts them (STORD_NUM_ND) and records the
 * count at the dot (STORD_NUM_AT_DOT), so a digit costs a compare and an add. The end then
 * divides away fraction digits past the scale. Past 19 digits each digit takes the exact
 * path: truncated once the fraction has `scale` digits, else checked for overflow. */
#define STORD_NUM_PLUS 0x01u /* a '+' sign */
#define STORD_NUM_NEG 0x02u
#define STORD_NUM_DIG 0x04u  /* a digit took the exact path (maybe not accumulated) */
#define STORD_NUM_DOT 0x08u
#define STORD_NUM_BAD 0x10u
#define STORD_NUM_OVF 0x40u  /* too many integer digits for an __s64 */
#define STORD_NUM_AT_DOT 0x100u  /* bits 8..19: the digit count at the dot */
#define STORD_NUM_ND 0x100000u   /* bits 20..31: digits accumulated */
#define STORD_NUM_FAST 19u       /* digits that fit a __u64 with no test */
#define STORD_MAX_SCALE 18

/* Results of stord_num_end. */
#define STORD_NUM_EMPTY 0    /* no bytes: a missing value (NULL); zeroed state says so */
#define STORD_NUM_OK 1
#define STORD_NUM_INVALID 2  /* does not parse: count it in `skipped` */
#define STORD_NUM_OVERFLOW 3 /* parses but does not fit at this scale: count in `overflow` */

/* acc*10 + 9 stays within a __u64 while acc <= this; past it the value is too large at any
 * scale. (S64_MAX's own bound would call 9223372036854775800..807 too large.) */
#define STORD_ACC_LIMIT 1844674407370955160ULL

static const __u64 stord_pow10[STORD_NUM_FAST + 1] = {
	1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
	100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
	10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
	100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL,
};

/* S64_MAX / 10^k: the largest magnitude that still fits once scaled by 10^k (a table, so
 * that the end of every number costs a load rather than a 64-bit division). */
static const __u64 stord_num_limit[STORD_MAX_SCALE + 1] = {
	9223372036854775807ULL, 922337203685477580ULL, 92233720368547758ULL, 9223372036854775ULL,
	922337203685477ULL, 92233720368547ULL, 9223372036854ULL, 922337203685ULL, 92233720368ULL,
	9223372036ULL, 922337203ULL, 92233720ULL, 9223372ULL, 922337ULL, 92233ULL, 9223ULL, 922ULL,
	92ULL, 9ULL,
};

/* stord_num_end's values passed through memory (see there). */
__u32 stord_num_fd STORD_SCRATCH;
__u64 stord_num_acc STORD_SCRATCH;

/* Digits past the first 19: exact (rare; out of line in spirit). */
static __always_inline void stord_num_digit_slow(__u64 *acc, __u32 *s, __u32 d, __u32 scale)
{
	__u32 nd = *s / STORD_NUM_ND;

	*s |= STORD_NUM_DIG;
	if (*s & STORD_NUM_DOT) {
		if (nd - ((*s / STORD_NUM_AT_DOT) & 0xfff) >= scale)
			return; /* past the scale: truncated */
	} else if (*acc == 0 && d == 0) {
		return; /* a leading zero: counts for nothing */
	}
	if (*s & STORD_NUM_OVF)
		return;
	if (*acc > STORD_ACC_LIMIT) {
		*s |= STORD_NUM_OVF;
		return;
	}
	*acc = *acc * 10 + d;
	*s += STORD_NUM_ND;
}

static __always_inline void stord_num_feed(__u64 *acc, __u32 *st, __u8 c, __u32 scale)
{
	__u32 s = *st;
	__u32 d = (__u32)c - '0';

	if (d < 10) {
		if (s < STORD_NUM_FAST * STORD_NUM_ND) {
			s += STORD_NUM_ND;
			*acc = *acc * 10 + d;
		} else {
			stord_num_digit_slow(acc, &s, d, scale);
		}
	} else if (c == '.') {
		if (s & STORD_NUM_DOT)
			s |= STORD_NUM_BAD;
		else
			s |= STORD_NUM_DOT | (s / STORD_NUM_ND) * STORD_NUM_AT_DOT;
	} else if ((c == '-' || c == '+') && s == 0) {
		s = c == '-' ? STORD_NUM_NEG : STORD_NUM_PLUS;
	} else {
		s |= STORD_NUM_BAD;
	}
	*st = s;
}

/* ---- words: 8 bytes at a time (SWAR) ------------------------------------------------
 * A word is 8 bytes of the window in one __u64, its first byte lowest (BPF is little-endian
 * here, as the hosts are). A byte mask has the top bit of each byte that is of interest. */
#define STORD_ONES 0x0101010101010101ULL
#define STORD_HIGHS 0x8080808080808080ULL
#define STORD_LOWS 0x7f7f7f7f7f7f7f7fULL

/* The 8 bytes at p, in one load wherever p is (BPF clang splits a load it does not know
 * to be aligned into 8 byte loads; the kernel allows an unaligned load from a map value
 * on hosts with efficient unaligned access, x86 and arm64). */
static __always_inline __u64 stord_word(const __u8 *p)
{
	__u64 v;

	asm("%0 = *(u64 *)(%1 + 0)" : "=r"(v) : "r"(p));
	return v;
}

/* Bytes of v equal to c, every one exact. */
static __always_inline __u64 stord_eq_bytes_exact(__u64 v, __u8 c)
{
	__u64 t = v ^ (c * STORD_ONES);

	return ~(((t & STORD_LOWS) + STORD_LOWS) | t | STORD_LOWS);
}

/* Bytes of v below c (c <= 128), every one exact: (b | 0x80) - c has its top bit clear
 * exactly when b & 0x7f < c, and no byte borrows from the next. */
static __always_inline __u64 stord_below_bytes_exact(__u64 v, __u8 c)
{
	return ~(((v | STORD_HIGHS) - c * STORD_ONES) | v) & STORD_HIGHS;
}

/* Index (0..7) of the lowest flagged byte of a byte mask m != 0: its lowest bit, moved to
 * bit 0 of its byte, times 0x0001..07 puts the byte index in the top byte (no ctz in BPF). */
static __always_inline __u32 stord_first(__u64 m)
{
	return (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
}

/* The first j bytes (1..7) of word v fed to a fresh number state at once: when they are an
 * optional sign, then digits and at most one dot, acc and *st become what stord_num_feed
 * makes of them one by one, and the result is 1. Otherwise 0 and nothing is changed (feed
 * them one by one). Branch-free but for that test: a number's length, sign and dot place
 * vary from record to record, and per-byte branches on them are mispredicted. */
static __always_inline int stord_num_feed_word(__u64 v, __u32 j, __u64 *acc, __u32 *st)
{
	__u64 lm = (1ULL << (j * 8)) - 1, s = v & lm, dots, x, low;
	__u32 b0 = s & 0xff, sg = b0 == '-' || b0 == '+', nd;

	s >>= sg * 8;
	lm >>= sg * 8;
	dots = stord_eq_bytes_exact(s, '.') & lm & STORD_HIGHS;
	if (dots & (dots - 1))
		return 0; /* two dots */
	s += (dots >> 7) * ('0' - '.'); /* the dot as a '0', for the digit test */
	x = s | ('0' * STORD_ONES & ~lm);
	/* every byte a digit: high nibble 3, and still 3 with 6 added (Lemire's test) */
	if (((x & 0xf0f0f0f0f0f0f0f0ULL) | (((x + 0x0606060606060606ULL) & 0xf0f0f0f0f0f0f0f0ULL) >> 4))
	    != 0x3333333333333333ULL)
		return 0;
	nd = j - sg - (dots != 0);
	low = (dots >> 7) - 1; /* the bytes below the dot (all of them without one) */
	/* the digits without the dot, first digit lowest; then moved to the top of the word
	 * (the bytes below are leading zeros) and combined in pairs, fours and eights */
	x = ((s & low) | ((s >> 8) & ~low)) & 0x0f0f0f0f0f0f0f0fULL;
	x = (x << ((7 - nd) * 8)) << 8;
	x = (x * 2561) >> 8;
	x = ((x & 0x00ff00ff00ff00ffULL) * 6553601) >> 16;
	x = ((x & 0x0000ffff0000ffffULL) * 42949672960001ULL) >> 32;
	*acc = x;
	*st = (b0 == '-' ? STORD_NUM_NEG : 0) | (b0 == '+' ? STORD_NUM_PLUS : 0) |
	      nd * STORD_NUM_ND | (dots ? STORD_NUM_DOT | stord_first(dots) * STORD_NUM_AT_DOT : 0);
	return 1;
}

static __always_inline int stord_num_end(__u64 acc, __u32 st, __u32 scale, __s64 *out)
{
	__u32 nd = st / STORD_NUM_ND, fd = 0, k;

	if (scale > STORD_MAX_SCALE)
		scale = STORD_MAX_SCALE;
	if (st & STORD_NUM_DOT)
		fd = nd - ((st / STORD_NUM_AT_DOT) & 0xfff);
	/* through memory: the tables' index must not tie the state word's value to the
	 * kernel verifier's state (it would tell apart every digit count and not converge) */
	STORD_FORGET(stord_num_fd, fd);
	/* the usual number (digits, nothing bad, no fraction digits past the scale) first */
	if ((st & (STORD_NUM_BAD | STORD_NUM_OVF)) || st < STORD_NUM_ND || fd > scale) {
		/* the tests above must not decide those below for the verifier (a decided
		 * branch ties its register's value to the state, see stord_num_fd) */
		STORD_FORGET(stord_num_fd, st);
		nd = st / STORD_NUM_ND;
		if (st == 0)
			return STORD_NUM_EMPTY;
		if ((st & STORD_NUM_BAD) || (nd == 0 && !(st & STORD_NUM_DIG)))
			return STORD_NUM_INVALID;
		if (st & STORD_NUM_OVF)
			return STORD_NUM_OVERFLOW;
		if (fd > scale) { /* fraction digits past the scale: truncated */
			k = fd - scale;
			if (k > STORD_NUM_FAST) /* never: only 19 digits pass unchecked */
				return STORD_NUM_OVERFLOW;
			acc /= stord_pow10[k];
			fd = scale;
		}
	}
	k = scale - fd;
	if (k > STORD_MAX_SCALE)
		return STORD_NUM_OVERFLOW;
	if (acc > stord_num_limit[k])
		return STORD_NUM_OVERFLOW;
	acc *= stord_pow10[k];
	*out = (st & STORD_NUM_NEG) ? -(__s64)acc : (__s64)acc;
	return STORD_NUM_OK;
}

/* ---- the CSV record scanner ------------------------------------------------------------ */
#ifdef STORD_CSV

#ifndef STORD_KEY_LEN
#define STORD_KEY_LEN 32
#endif

/* CSV dialect and the columns the scanner extracts (0-based; -1 = none). */
STORD_PARAM(__u8, delim, ',');
STORD_PARAM(__u8, header, 0); /* 1: the file's first record is a header (not counted) */
STORD_PARAM(__s32, col, -1);     /* the number column */
STORD_PARAM(__s32, key_col, -1); /* the key column (bytes) */
STORD_PARAM(__u32, scale, 2);    /* fixed-point decimals of numbers */

/* Every CSV program reports these. */
__u64 skipped; /* records whose number column does not parse (or key too long) */
__u64 empty;   /* records whose number column is empty or missing */
__u64 overflow; /* values or sums that do not fit: the query fails */

/* One record, as given to stord_csv_record(). */
struct stord_record {
	__s64 num;    /* valid when num_status == STORD_NUM_OK */
	__u32 num_status;
	__u32 key_len; /* > STORD_KEY_LEN: the key was too long or held a NUL byte */
	char key[STORD_KEY_LEN]; /* NUL padded */
};

#define STORD_CSV_INQ 1u  /* inside a quoted field */
#define STORD_CSV_PQ 2u   /* the previous byte was a quote (stord_csv.fl) */
#define STORD_CSV_NPQ 2u  /* ...was not (the walk's fl: one OR per run of content) */
#define STORD_CSV_SEEN 4u /* the record has a byte other than CR (stord_csv.fl only) */

struct stord_csv {
	__u64 acc;  /* number being parsed */
	__u32 nst;  /* its flags */
	__u32 col;  /* current column */
	__u32 fl;   /* STORD_CSV_* */
	__u32 skip; /* the next record is the header */
	struct stord_record rec;
};

struct stord_csv stord_csv STORD_SCRATCH;

/* Called once per record (blank lines are not records; the header is not passed). */
static __always_inline void stord_csv_record(struct stord_record *r);

/* A key holding a NUL byte is refused like a key that is too long: keys are NUL padded,
 * so "a\0b" would read back as "a" and merge with it. */
static __always_inline void stord_csv_key_byte(__u8 c)
{
	__u32 k = stord_csv.rec.key_len;

	if (c == 0)
		k = STORD_KEY_LEN;
	if (k < STORD_KEY_LEN)
		stord_csv.rec.key[k] = c;
	if (k <= STORD_KEY_LEN)
		stord_csv.rec.key_len = k + 1;
}

static __always_inline void stord_csv_content(__u32 c, __u32 column, __u64 *acc, __u32 *nst)
{
	/* col/key_col are frozen parameters: a -1 (none) folds the test away */
	if (col >= 0 && column == (__u32)col) {
		/* through memory (see stord_num_end): past 19 digits the feed's tests decide
		 * the digit count for the verifier, which would then walk every iteration of
		 * the loop around this apart */
		STORD_FORGET(stord_num_fd, *nst);
		STORD_FORGET(stord_num_acc, *acc);
		stord_num_feed(acc, nst, c, scale);
	}
	if (key_col >= 0 && column == (__u32)key_col)
		stord_csv_key_byte(c);
}

/* Whether the scanner reads the column's bytes (the number or the key column). */
static __always_inline int stord_csv_wanted(__u32 column)
{
	return (col >= 0 && column == (__u32)col) || (key_col >= 0 && column == (__u32)key_col);
}

static __always_inline void stord_csv_field_end(__u32 column, __u64 acc, __u32 nst)
{
	if (col >= 0 && column == (__u32)col)
		stord_csv.rec.num_status = stord_num_end(acc, nst, scale, &stord_csv.rec.num);
}

static __always_inline void stord_csv_record_end(int blank)
{
	struct stord_record *r = &stord_csv.rec;

	if (blank)
		return; /* a blank line (no byte but CRs) is not a record */
	if (stord_csv.skip)
		stord_csv.skip = 0;
	else
		stord_csv_record(r);
	r->num_status = STORD_NUM_EMPTY;
	r->key_len = 0;
	if (key_col >= 0)
		__builtin_memset(r->key, 0, STORD_KEY_LEN);
}

/* The loop state of one chunk (bpf_loop's context, on the stack); stord_csv between. */
struct stord_csv_walk {
	struct xdp_md *ctx;
	__u64 acc;
	__u32 nst;
	__u32 column;
	__u32 fl;
	__u32 len;
	__u32 error;
	__u32 start; /* in the window: where the record's first byte other than CR is (or will
		      * be); stord_zero - 1, never an index, once it has one */
	__u32 n;     /* the window's length */
	__u32 base;  /* in the window: where the current word starts (multiples of 8) */
	__u32 cs;    /* in the window: the first byte after the last special one */
	__u32 at;    /* where stord_csv_take_byte reads */
	__u64 m;     /* the current word's special bytes not yet taken */
};

/* Where stord_csv_window passes the walk's loop state through memory (see there). */
struct {
	__u64 acc;
	__u32 nst, column, fl, start;
} stord_csv_mem STORD_SCRATCH;

/* A byte of a read column that is content: not a quote, so the next quote is not doubled. */
static __always_inline void stord_csv_read_byte(struct stord_csv_walk *w, __u32 c, __u32 fl)
{
	w->fl = fl | STORD_CSV_NPQ;
	stord_csv_content(c, w->column, &w->acc, &w->nst);
}

/* The state machine (RFC 4180), for one byte the walk stops at (stord_csv_step): a quote
 * toggles the quoted state, a doubled quote inside a quoted field is a literal quote,
 * delimiter and LF end fields and records only outside quotes, CR outside quotes is
 * dropped; other bytes are content (read by stord_csv_read_byte in a read column).
 * `wanted`: whether the scanner reads the current column (a constant in each of the two
 * copies stord_csv_step makes). A blank line is told by position (the newline's index
 * against the index where the record's first byte other than CR is), and in a column
 * nobody reads a quote only toggles the quoted state (a doubled quote's two toggles leave
 * the state a literal quote does). Returns 1 at the quote after the window's end, else 0. */
static __always_inline long stord_csv_byte_in(__u32 idx, struct stord_csv_walk *w, __u32 c,
					      __u32 fl, int wanted)
{
	if (c != delim) {
		if (c > '"') { /* ordinary in a quoted field, or the first of a record */
			if (wanted)
				stord_csv_read_byte(w, c, fl);
			return 0;
		}
		if (c == '"') {
			if (idx >= w->n)
				return 1; /* the quote past the window's end */
			if (!wanted) {
				/* only the field's end matters: "" toggles twice, which leaves the
				 * same quoted state as a literal quote does */
				w->fl = fl ^ STORD_CSV_INQ;
			} else if (!(fl & (STORD_CSV_INQ | STORD_CSV_NPQ))) {
				/* "" inside a quoted field: a literal quote, and quoted again */
				stord_csv_content(c, w->column, &w->acc, &w->nst);
				w->fl = stord_zero | STORD_CSV_INQ | STORD_CSV_NPQ;
			} else {
				w->fl = (fl ^ STORD_CSV_INQ) & ~STORD_CSV_NPQ;
			}
			return 0;
		}
		if (!(fl & STORD_CSV_INQ)) {
			if (c == '\n') {
				if (wanted)
					stord_csv_field_end(w->column, w->acc, w->nst);
				stord_csv_record_end(w->column == 0 && idx == w->start);
				w->column = stord_zero;
				w->fl = stord_zero | STORD_CSV_NPQ;
				w->acc = stord_zero;
				w->nst = stord_zero;
				w->start = idx + 1;
				return 0;
			}
			if (c == '\r') { /* dropped; at a record's start, the record starts later */
				if (idx == w->start)
					w->start = idx + 1;
				return 0;
			}
		}
	} else if (!(fl & STORD_CSV_INQ)) {
		if (wanted)
			stord_csv_field_end(w->column, w->acc, w->nst);
		w->column++;
		w->fl = stord_zero | STORD_CSV_NPQ;
		w->acc = stord_zero;
		w->nst = stord_zero;
		return 0;
	}
	/* a control byte, or CR, LF or the delimiter inside quotes: content */
	if (wanted)
		stord_csv_read_byte(w, c, fl);
	return 0;
}

/* The bytes the walk stops at ("special"): the delimiter, and the quote, LF and CR among the
 * bytes below '#' (the others there, control bytes, space and '!', are flagged too, for
 * one test less: the state machine finds them to be content). Exact: every flagged byte is
 * one of these, so the walk can take them all, lowest first. */
static __always_inline __u64 stord_csv_specials(__u64 v)
{
	return (stord_eq_bytes_exact(v, delim) | stord_below_bytes_exact(v, '"' + 1)) &
	       STORD_HIGHS;
}

/* A content byte of a read column that the walk did not stop at (nested bpf_loop). */
static long stord_csv_take_byte(__u32 i, void *arg)
{
	struct stord_csv_walk *w = arg;

	stord_csv_content(stord_buf[(w->at + i) & (STORD_WINDOW - 1)], w->column, &w->acc,
			  &w->nst);
	return 0;
}

/* The bytes [w->cs, end) of a read column: content, none of them special; then cs = end.
 * The start of a number (at most 7 bytes) as one word; else byte by byte. Non-zero: a
 * helper failed. */
static __always_inline int stord_csv_take(struct stord_csv_walk *w, __u32 end)
{
	__u32 len = end - w->cs, at = w->cs;
	int fast;

	if (!len)
		return 0;
	w->fl |= STORD_CSV_NPQ;
	w->cs = end;
	fast = col >= 0 && w->column == (__u32)col && key_col != col && w->nst == 0 && len < 8 &&
	       stord_num_feed_word(stord_word(&stord_buf[at & STORD_BUF_MASK]), len,
				   &w->acc, &w->nst);
	/* through memory (see stord_num_end): neither the test of nst nor the word's flags
	 * may tie the state word's value to the kernel verifier's state */
	STORD_FORGET(stord_num_fd, w->nst);
	STORD_FORGET(stord_num_acc, w->acc);
	if (fast)
		return 0;
	w->at = at;
	return bpf_loop(len, stord_csv_take_byte, w, 0) < 0;
}

/* One step of the walk over a window: the next special byte through the state machine
 * (after a read column's content before it), fetching the next word when the current one
 * has no more. The walk goes a word at a time and never looks at the bytes between special
 * ones of a column nobody reads; its next position never waits for the last one's work
 * (the word's mask loses its lowest bit; the next word is 8 bytes on). The window ends at
 * a quote after its last byte (stord_csv_window), or with its last word when it is full.
 * Returns 1 at the window's end. */
static long stord_csv_step(__u32 i, void *arg)
{
	struct stord_csv_walk *w = arg;
	__u32 base = w->base, p, c, end;
	__u64 m = w->m;

	if (!m) {
		base += 8;
		w->base = base;
		m = stord_csv_specials(stord_word(&stord_buf[base & STORD_BUF_MASK]));
		if (!m)
			return 0;
	}
	p = base + stord_first(m);
	w->m = m & (m - 1);
	c = stord_buf[p & STORD_BUF_MASK];
	if (stord_csv_wanted(w->column)) {
		if (stord_csv_take(w, p)) {
			w->error = 1;
			return 1;
		}
		end = stord_csv_byte_in(p, w, c, w->fl, 1);
	} else {
		end = stord_csv_byte_in(p, w, c, w->fl, 0);
	}
	/* cs = n + 1 tells stord_csv_window that the walk got to the end */
	w->cs = p + 1;
	return end;
}

/* One window of the chunk: load it, then step through it: at most a step per word and
 * one per byte. */
static long stord_csv_window(__u32 widx, void *arg)
{
	struct stord_csv_walk *w = arg;
	int n = stord_window(w->ctx, widx, w->len);
	__u32 steps;

	if (n < 0) {
		w->error = 1;
		return 1;
	}
	stord_buf[n & STORD_BUF_MASK] = '"'; /* a special byte after the last */
	w->n = n;
	/* The loop state through memory, which the kernel verifier does not track: the step
	 * loop can end in many states, and without this it would walk the next window from
	 * each of them (the jit forwards the stores to the loads: a few stores per window). */
	STORD_FORGET(stord_csv_mem.acc, w->acc);
	STORD_FORGET(stord_csv_mem.nst, w->nst);
	STORD_FORGET(stord_csv_mem.column, w->column);
	STORD_FORGET(stord_csv_mem.fl, w->fl);
	STORD_FORGET(stord_csv_mem.start, w->start);
	/* separate loads of stord_zero: the verifier links registers loaded from one, and a
	 * test of m (0 at first) would then make cs a known 0 */
	w->base = *(volatile __u32 *)&stord_zero - 8;
	w->m = 0;
	w->cs = *(volatile __u32 *)&stord_zero;
	steps = n + n / 8 + 2;
	if (bpf_loop(steps, stord_csv_step, w, 0) < 0 || w->error || w->cs != (__u32)n + 1) {
		w->error = 1;
		return 1;
	}
	/* the next window's index 0 is where a record that has no byte yet starts */
	w->start = w->start == (__u32)n ? stord_zero : stord_zero - 1;
	return 0;
}

/* LAST: a final record without a newline; then clean scratch for a next range. */
static __always_inline void stord_csv_flush(void)
{
	stord_csv_field_end(stord_csv.col, stord_csv.acc, stord_csv.nst);
	stord_csv_record_end(stord_csv.col == 0 && !(stord_csv.fl & STORD_CSV_SEEN));
	stord_csv.acc = 0;
	stord_csv.nst = 0;
	stord_csv.col = 0;
	stord_csv.fl = 0;
	stord_csv.skip = 0;
}

static __always_inline int stord_csv_main(struct xdp_md *ctx)
{
	struct stord_chunk ch;
	struct stord_csv_walk w;

	if (stord_chunk(ctx, &ch))
		return STORD_ERROR;
	if (ch.offset == 0 && header)
		stord_csv.skip = 1; /* only the range that starts the file holds the header */
	w.ctx = ctx;
	w.len = ch.len;
	w.error = 0;
	w.acc = stord_csv.acc;
	w.nst = stord_csv.nst;
	w.column = stord_csv.col;
	w.fl = (stord_csv.fl & ~STORD_CSV_SEEN) ^ STORD_CSV_NPQ;
	w.start = (stord_csv.fl & STORD_CSV_SEEN) ? stord_zero - 1 : stord_zero;
	if (ch.len && bpf_loop(STORD_WINDOWS(ch.len), stord_csv_window, &w, 0) < 0)
		return STORD_ERROR;
	if (w.error)
		return STORD_ERROR;
	stord_csv.acc = w.acc;
	stord_csv.nst = w.nst;
	stord_csv.col = w.column;
	stord_csv.fl = (w.fl ^ STORD_CSV_NPQ) | (w.start ? STORD_CSV_SEEN : 0);
	if (ch.last)
		stord_csv_flush();
	return STORD_SKIP;
}

/* Adds v to *sum, counting an overflow instead of wrapping. */
static __always_inline void stord_add(__s64 *sum, __s64 v)
{
	if (__builtin_add_overflow(*sum, v, sum))
		overflow++;
}

/* Folds the record's number status into skipped/empty/overflow; 1 when num is valid. */
static __always_inline int stord_csv_num_ok(const struct stord_record *r)
{
	__u32 st = r->num_status;

	if (st == STORD_NUM_OK) /* one compare on the usual path (no switch) */
		return 1;
	empty += st == STORD_NUM_EMPTY;
	overflow += st == STORD_NUM_OVERFLOW;
	skipped += st == STORD_NUM_INVALID;
	return 0;
}

#endif /* STORD_CSV */

#endif /* STORD_H */
