/* hist: fixed-width histogram of a number column. Bucket i holds lo + i*width <= v <
 * lo + (i+1)*width for i < nbuckets; below and above count the rest.
 * Parameters: lo, width (> 0; fixed point at scale), nbuckets (1..HIST_MAX), col, scale,
 * delim, header. */
#define STORD_CSV
#include "stord.h"

#define HIST_MAX 64

STORD_PARAM(__s64, lo, 0);
STORD_PARAM(__s64, width, 1);
STORD_PARAM(__u32, nbuckets, 10);

__u64 rows;
__u64 count; /* values placed (below and above included) */
__u64 below;
__u64 above;
__u64 buckets[HIST_MAX];

static __always_inline void stord_csv_record(struct stord_record *r)
{
	__s64 d, w = width;
	__u64 i;

	rows++;
	if (!stord_csv_num_ok(r))
		return;
	count++;
	if (r->num < lo) {
		below++;
		return;
	}
	if (__builtin_sub_overflow(r->num, lo, &d) || w <= 0) {
		above++;
		return;
	}
	i = (__u64)d / (__u64)w;
	if (i >= nbuckets || i >= HIST_MAX) {
		above++;
		return;
	}
	buckets[i & (HIST_MAX - 1)]++;
}

SEC("xdp")
int hist(struct xdp_md *ctx)
{
	return stord_csv_main(ctx);
}

char LICENSE[] SEC("license") = "GPL";
