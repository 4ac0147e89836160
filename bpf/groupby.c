/* groupby: per distinct key (the bytes of column key_col, at most STORD_KEY_LEN) the
 * number of records and count/sum/min/max of the number column col (-1: rows only).
 * At most GROUPS_MAX keys: records of further keys are counted in `dropped` (the query
 * reports the limit; never a silently partial answer). Keys longer than STORD_KEY_LEN or
 * holding a NUL byte count in `skipped`. */
#define STORD_CSV
#include "stord.h"

#define GROUPS_MAX 4096

struct group_key {
	char key[STORD_KEY_LEN];
};

struct group {
	__u64 rows;
	__u64 count;
	__s64 sum;
	__s64 min STORD_MIN;
	__s64 max STORD_MAX;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GROUPS_MAX);
	__type(key, struct group_key);
	__type(value, struct group);
} groups SEC(".maps");

__u64 rows;
__u64 dropped; /* records whose key did not fit in the map */

static __always_inline void stord_csv_record(struct stord_record *r)
{
	struct group *g;
	int ok;

	rows++;
	if (r->key_len > STORD_KEY_LEN) {
		skipped++;
		return;
	}
	ok = col >= 0 ? stord_csv_num_ok(r) : 0;
	g = bpf_map_lookup_elem(&groups, r->key);
	if (!g) {
		struct group init = {.min = STORD_S64_MAX, .max = STORD_S64_MIN};

		if (bpf_map_update_elem(&groups, r->key, &init, BPF_NOEXIST)) {
			dropped++;
			return;
		}
		g = bpf_map_lookup_elem(&groups, r->key);
		if (!g) {
			dropped++;
			return;
		}
	}
	g->rows++;
	if (!ok)
		return;
	g->count++;
	if (__builtin_add_overflow(g->sum, r->num, &g->sum))
		overflow++;
	if (r->num < g->min)
		g->min = r->num;
	if (r->num > g->max)
		g->max = r->num;
}

SEC("xdp")
int groupby(struct xdp_md *ctx)
{
	return stord_csv_main(ctx);
}

char LICENSE[] SEC("license") = "GPL";
