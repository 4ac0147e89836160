/* Maps, global data in every section, parameters, a subprogram and a bpf_loop callback. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct agg {
	__u64 count;
	__s64 lo __attribute__((btf_decl_tag("stord:min")));
	char name[8];
	int arr[3];
};

struct agg result;
__u64 hits = 0;
__u32 flags __attribute__((btf_decl_tag("stord:or"))) = 5;
const volatile __u64 threshold = 10;
const volatile __s32 delta = -3;
const volatile char pattern[16] = "abc";
const volatile __u8 table8[32] = { 1, 2, 3 };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct agg);
	__uint(max_entries, 64);
} groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(key_size, 4);
	__uint(value_size, 8);
	__uint(max_entries, 16);
	__uint(map_flags, BPF_F_RDONLY_PROG);
} table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} percpu SEC(".maps");

static long add_idx(__u32 idx, void *ctx)
{
	hits += idx;
	return 0;
}

static __attribute__((noinline)) int scale(int x)
{
	return x * 3 + threshold + delta;
}

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	__u32 k = ctx->data_end - ctx->data;
	struct agg *v = bpf_map_lookup_elem(&groups, &k);
	__u32 zero = 0;
	__u64 *t = bpf_map_lookup_elem(&table, &zero);
	__u64 *pc = bpf_map_lookup_elem(&percpu, &zero);

	if (v)
		v->count++;
	if (t && pc)
		*pc += *t;
	result.count += scale(k);
	bpf_loop(10, add_idx, 0, 0);
	if (pattern[0] == 'x' || table8[k & 31] == 7)
		flags |= 2;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
