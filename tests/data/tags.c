/* Every kind of reduce tag and value shape that state decoding handles. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define TAG(x) __attribute__((btf_decl_tag("stord:" #x)))

enum color { RED, GREEN = 5, BLUE = 9 };
typedef __u32 maxed_t TAG(max);

struct bits {
	unsigned int low : 3;
	int mid : 5;
	unsigned int high : 24;
};

struct row {
	__u64 n;
	__s32 lo TAG(min);
	__s32 hi TAG(max);
	__u8 mask TAG(or);
	__u8 all TAG(and);
	_Bool seen;
	char label[6];
	__u64 tmp TAG(scratch);
	enum color c TAG(max);
	struct bits b;
	__s16 hist[4];
	maxed_t peak;
};

struct pair { __u32 a; __u32 b; };
struct pair_m { __u32 a; __u32 b; } TAG(min);

struct row r1;
struct row r2 TAG(max);                /* members without their own tag take max */
__s64 total = 1;
__u64 scratchpad[4] TAG(scratch);
struct pair grid[2][3];
struct pair_m pm;
__u64 skipped;
__u64 overflow;

struct key { __u32 id; char name[4]; };
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct key);
	__type(value, struct pair);
	__uint(max_entries, 8);
} bykey SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __s64);
	__uint(max_entries, 8);
} mins SEC(".maps") TAG(min);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} work SEC(".maps") TAG(scratch);

SEC("xdp")
int prog(struct xdp_md *ctx)
{
	/* Touch everything so that clang keeps it. */
	__u32 z = 0;
	struct key k = {};
	struct pair *p = bpf_map_lookup_elem(&bykey, &k);
	__u64 kk = 0;
	__s64 *m = bpf_map_lookup_elem(&mins, &kk);
	__u64 *w = bpf_map_lookup_elem(&work, &z);

	r1.n += (p ? p->a : 0) + (m ? *m : 0) + (w ? *w : 0);
	r2.n++;
	total++;
	scratchpad[1]++;
	grid[1][2].b++;
	pm.a++;
	skipped++;
	overflow |= 0;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
