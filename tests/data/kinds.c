/* BTF kinds beyond the usual ones: FLOAT, TYPE_TAG, UNION, bitfields, enums, nesting. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "kinds.h"

struct fl fv;
union u uv;
struct nest nv;
static int counter;

SEC("xdp")
int p(struct xdp_md *c)
{
	fv.p = 0;
	uv.a++;
	nv.b[1].mid++;
	counter++;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
