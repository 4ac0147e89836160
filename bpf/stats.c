/* stats: rows, count, sum, min and max of a number column (sum/avg/min/max finish from it).
 * Parameters: col (0-based), scale (fixed-point decimals), delim, header, minmax. */
#define STORD_CSV
#include "stord.h"

__u64 rows;  /* records (header excluded) */
__u64 count; /* values folded into sum/min/max */
__s64 sum;
__s64 min STORD_MIN = STORD_S64_MAX;
__s64 max STORD_MAX = STORD_S64_MIN;

STORD_PARAM(__u8, minmax, 1); /* 0: min and max are not wanted (sum, avg) and not kept */

static __always_inline void stord_csv_record(struct stord_record *r)
{
	rows++;
	if (!stord_csv_num_ok(r))
		return;
	count++;
	stord_add(&sum, r->num);
	if (!minmax)
		return;
	if (r->num < min)
		min = r->num;
	if (r->num > max)
		max = r->num;
}

SEC("xdp")
int stats(struct xdp_md *ctx)
{
	return stord_csv_main(ctx);
}

char LICENSE[] SEC("license") = "GPL";
