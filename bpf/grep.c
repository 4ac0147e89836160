/* grep: lines (LF-separated; a last line without LF counts) and lines containing a byte
 * string. The matcher is a DFA over the needle (Knuth-Morris-Pratt automaton) computed by
 * the caller: dfa[s * 256 + c] is the next state after byte c in state s; state `needle_len`
 * means "matched" and must map to itself. One table load per byte, no inner loop.
 * Parameters: needle_len (1..GREP_MAX_NEEDLE), dfa. Verdict: keep chunks with a match. */
#include "stord.h"

#define GREP_MAX_NEEDLE 63
#define GREP_STATES (GREP_MAX_NEEDLE + 1)

STORD_PARAM(__u32, needle_len, 1);
const volatile __u8 dfa[GREP_STATES * 256] = {};

__u64 lines;
__u64 matches;

struct grep_scratch {
	__u64 line_start; /* file offset where the current line starts */
	__u32 state;      /* DFA state */
	__u32 started;
};

struct grep_scratch grep_s STORD_SCRATCH;

struct grep_walk {
	struct xdp_md *ctx;
	__u64 offset;
	__u64 line_start;
	__u64 lines;
	__u64 matches;
	__u32 state;
	__u32 len;
	__u32 error;
};

static long grep_byte(__u32 idx, void *arg)
{
	struct grep_walk *w = arg;
	int b = stord_byte(w->ctx, idx, w->len);
	__u32 c = (__u32)b;

	if (b < 0) {
		w->error = 1;
		return 1;
	}
	if (c == '\n') {
		w->lines++;
		w->matches += w->state == needle_len;
		w->state = stord_zero;
		w->line_start = w->offset + idx + 1;
		return 0;
	}
	w->state = dfa[((w->state & GREP_MAX_NEEDLE) << 8) | c];
	return 0;
}

SEC("xdp")
int grep(struct xdp_md *ctx)
{
	struct stord_chunk ch;
	struct grep_walk w;

	if (stord_chunk(ctx, &ch))
		return STORD_ERROR;
	if (!grep_s.started) {
		grep_s.started = 1;
		grep_s.line_start = ch.offset;
	}
	w.ctx = ctx;
	w.offset = ch.offset;
	w.line_start = grep_s.line_start;
	w.lines = stord_zero; /* counted from "unknown" 0: see stord_zero */
	w.matches = stord_zero;
	w.state = grep_s.state;
	w.len = ch.len;
	w.error = 0;
	if (ch.len && bpf_loop(ch.len, grep_byte, &w, 0) < 0)
		return STORD_ERROR;
	if (w.error)
		return STORD_ERROR;
	lines += w.lines;
	matches += w.matches;
	grep_s.line_start = w.line_start;
	grep_s.state = w.state;
	if (ch.last) {
		if (ch.offset + ch.len > grep_s.line_start) { /* a last line without LF */
			lines++;
			matches += grep_s.state == needle_len;
		}
		grep_s.state = 0;
		grep_s.started = 0;
	}
	return w.matches ? STORD_KEEP : STORD_SKIP;
}

char LICENSE[] SEC("license") = "GPL";
