/* An unknown reduce tag: reduce_spec must refuse it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

__u64 total __attribute__((btf_decl_tag("stord:avg")));

SEC("xdp")
int p(struct xdp_md *ctx)
{
	total++;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
