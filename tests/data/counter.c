/* Byte statistics with reduce tags, for decode/merge tests through a real engine. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TAG(x) __attribute__((btf_decl_tag("stord:" #x)))

struct stats {
	__u64 bytes;
	__u64 lines;
	__u8 lo TAG(min);
	__u8 hi TAG(max);
	__u8 seen_bits TAG(or);
	__u64 last_offset TAG(max);
	__u32 cursor TAG(scratch);
};

struct stats st = { .lo = 255 };
__u64 skipped;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u8);
	__type(value, __u64);
	__uint(max_entries, 256);
} freq SEC(".maps");

SEC("xdp")
int count(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	unsigned char *end = (void *)(long)ctx->data_end;
	__u64 *meta = (void *)(long)ctx->data_meta;

	if ((void *)(meta + 1) <= (void *)data)
		st.last_offset = *meta;
	for (int i = 0; i < 1024; i++) {	/* small enough for the kernel verifier */
		if (data + i + 1 > end)
			break;
		__u8 c = data[i];
		__u64 one = 1, *n;

		st.bytes++;
		if (c == '\n')
			st.lines++;
		if (c < st.lo)
			st.lo = c;
		if (c > st.hi)
			st.hi = c;
		st.seen_bits |= 1 << (c & 7);
		st.cursor = i;
		n = bpf_map_lookup_elem(&freq, &c);
		if (n)
			*n += 1;
		else
			bpf_map_update_elem(&freq, &c, &one, BPF_ANY);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
