/* Several programs; global and static subprograms; static data reached through section
 * symbols plus addends; string literals in .rodata.str1.1. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

static __u64 counter;          /* static: relocated as .bss + offset */
static __u64 other = 7;        /* static in .data */
__u64 visible;

__attribute__((noinline)) int global_helper(int x)
{
	return x + 1;
}

static __attribute__((noinline)) int leaf(int x)
{
	return x ^ 0x55;
}

static __attribute__((noinline)) int middle(int x)
{
	return leaf(x) + global_helper(x);
}

static long cb(__u32 i, void *ctx)
{
	counter += leaf(i);
	return 0;
}

SEC("xdp")
int first(struct xdp_md *ctx)
{
	counter += middle(ctx->data_end - ctx->data);
	other += 1;
	bpf_loop(4, cb, 0, 0);
	return XDP_PASS;
}

SEC("xdp")
int second(struct xdp_md *ctx)
{
	visible += global_helper(2);
	return XDP_DROP;
}

SEC("tc")
int third(struct __sk_buff *skb)
{
	bpf_printk("len %d", skb->len);
	return leaf(skb->len) & 1;
}

char LICENSE[] SEC("license") = "GPL";
