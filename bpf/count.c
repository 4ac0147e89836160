/* count: records, or with op != 0 only records whose number column compares to value.
 * Parameters: op (0 all, 1 eq, 2 ne, 3 lt, 4 le, 5 gt, 6 ge), value (fixed point at scale),
 * col, scale, delim, header. A filtered record with an empty column does not match
 * (counted in empty); one that does not parse counts in skipped. */
#define STORD_CSV
#include "stord.h"

#define OP_ALL 0
#define OP_EQ 1
#define OP_NE 2
#define OP_LT 3
#define OP_LE 4
#define OP_GT 5
#define OP_GE 6

STORD_PARAM(__u32, op, OP_ALL);
STORD_PARAM(__s64, value, 0);

__u64 rows;  /* records (header excluded) */
__u64 count; /* records that match */

static __always_inline void stord_csv_record(struct stord_record *r)
{
	__u32 o = op;
	__s64 v;
	int hit;

	rows++;
	if (o == OP_ALL) {
		count++;
		return;
	}
	if (!stord_csv_num_ok(r))
		return;
	v = r->num;
	switch (o) {
	case OP_EQ: hit = v == value; break;
	case OP_NE: hit = v != value; break;
	case OP_LT: hit = v < value; break;
	case OP_LE: hit = v <= value; break;
	case OP_GT: hit = v > value; break;
	case OP_GE: hit = v >= value; break;
	default: hit = 0;
	}
	count += hit;
}

SEC("xdp")
int count_rows(struct xdp_md *ctx)
{
	return stord_csv_main(ctx);
}

char LICENSE[] SEC("license") = "GPL";
