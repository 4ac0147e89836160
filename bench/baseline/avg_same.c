/* The same-job C baseline: stord's built-in `avg`/`stats`, hand-written in C for speed.
 *
 * Why it exists: bench/baseline/avg.c is the naive loop a programmer writes first; it does
 * less than stord does (no quoting, no validation: "1a2" reads as 12, a quoted comma shifts
 * the columns, nothing overflows). This program does exactly the job of stord's `stats`
 * (bpf/include/stord.h's CSV scanner + bpf/stats.c + the finish in stord/query/builtins.py),
 * so "jit vs C" can also be read as equal work against equal work:
 * - RFC 4180: a quote toggles the quoted state; a quote right after a closing quote (CRs
 *   outside quotes in between are ignored) is a literal quote and reopens the quotes;
 *   the delimiter, CR and LF inside quotes are content; CR outside quotes is dropped.
 * - Blank lines (no byte but CRs) are not records; HEADER=1 skips the first record.
 * - The column's field, quotes aside, must be "[+-]digits[.digits]" (either digit run may
 *   be empty, not both): kept as value * 10^SCALE in an int64, digits past SCALE truncated.
 *   Empty or missing field: `empty`; anything else: `skipped`; a value or a running sum
 *   that does not fit an int64: `overflow` (stord fails such a query; here it is reported).
 *   As in stord.h, the digits (fraction ones kept) accumulate in a uint64_t; a value whose
 *   magnitude is above INT64_MAX once scaled is an overflow.
 * - rows (records, header excluded), count, sum, min and max of the valid values.
 * Written the way a careful programmer writes it for speed: one pass over an mmap, a byte
 * loop over a 256-entry class table with tight inner loops for runs of ordinary bytes, and
 * a straight-line parse of the common number shape at the start of the column's field
 * (anything else goes through the byte state machine from the field's start); no SIMD, no
 * memchr, no threads (like avg.c). Build: gcc -O2.
 *
 * Usage: avg_same FILE COLUMN HEADER(0|1) [REPEAT [SCALE [DELIM]]]
 *   SCALE defaults to 4, the scale stord's built-ins use when the client gives none (the
 *   bench's avg does not give one); DELIM defaults to ','.
 * Prints one line per repeat:
 *   "<rows> <count> <sum> <empty> <skipped> <overflow> <min> <max> <avg> <seconds>"
 * sum/min/max in units of 10^-SCALE (min/max are INT64_MAX/INT64_MIN when count is 0, as in
 * stord's state), avg = sum / count / 10^SCALE ("nan" when count is 0), the time covering
 * open, mmap, the parse and munmap (the file is expected in the page cache).
 */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SCALE 18

/* Number parse flags: stord.h's STORD_NUM_*, bit for bit. */
#define N_ANY 0x01u
#define N_NEG 0x02u
#define N_DIG 0x04u
#define N_DOT 0x08u
#define N_BAD 0x10u
#define N_OVF 0x40u
#define N_FD 0x100u /* fraction digits counted from bit 8 */

enum { NUM_EMPTY, NUM_OK, NUM_INVALID, NUM_OVERFLOW };

/* acc * 10 + 9 stays <= INT64_MAX while acc <= this. */
#define ACC_LIMIT 1844674407370955160ULL /* acc * 10 + 9 fits a uint64_t */

static const uint64_t pow10_[MAX_SCALE + 1] = {
    1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
    100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
    10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
    100000000000000000ULL, 1000000000000000000ULL,
};

/* INT64_MAX / 10^k: the largest magnitude that still fits once scaled by 10^k. */
static const uint64_t limit_[MAX_SCALE + 1] = {
    9223372036854775807ULL, 922337203685477580ULL, 92233720368547758ULL, 9223372036854775ULL,
    922337203685477ULL, 92233720368547ULL, 9223372036854ULL, 922337203685ULL, 92233720368ULL,
    9223372036ULL, 922337203ULL, 92233720ULL, 9223372ULL, 922337ULL, 92233ULL, 9223ULL, 922ULL,
    92ULL, 9ULL,
};

/* Byte classes outside quotes. */
enum { C_ORD, C_QUOTE, C_DELIM, C_LF, C_CR };

struct result {
    int64_t rows, count, sum, empty, skipped, overflow, min, max;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One content byte of the number field. */
static inline void feed(uint64_t *acc, uint32_t *st, unsigned c, uint32_t scale)
{
    uint32_t s = *st | N_ANY, d = c - '0';

    if (d < 10) {
        s |= N_DIG;
        if (s & N_DOT) {
            if ((s >> 8) >= scale) { /* past the scale: truncated */
                *st = s;
                return;
            }
            s += N_FD;
        }
        if (*acc > ACC_LIMIT)
            s |= N_OVF;
        else
            *acc = *acc * 10 + d;
    } else if (c == '.') {
        s |= (s & N_DOT) ? N_BAD : N_DOT;
    } else if ((c == '-' || c == '+') && !(*st & N_ANY)) {
        if (c == '-')
            s |= N_NEG;
    } else {
        s |= N_BAD;
    }
    *st = s;
}

/* The end of the number field: NUM_*, the value in *out when NUM_OK. */
static inline int num_end(uint64_t acc, uint32_t st, uint32_t scale, int64_t *out)
{
    uint32_t fd = st >> 8, k;

    if (!(st & N_ANY))
        return NUM_EMPTY;
    if ((st & N_BAD) || !(st & N_DIG))
        return NUM_INVALID;
    if (st & N_OVF)
        return NUM_OVERFLOW;
    if (fd > scale)
        fd = scale;
    k = scale - fd;
    if (acc > limit_[k])
        return NUM_OVERFLOW;
    acc *= pow10_[k];
    *out = (st & N_NEG) ? -(int64_t)acc : (int64_t)acc;
    return NUM_OK;
}

static inline void record(struct result *r, int status, int64_t num)
{
    r->rows++;
    switch (status) {
    case NUM_OK:
        r->count++;
        if (__builtin_add_overflow(r->sum, num, &r->sum))
            r->overflow++;
        if (num < r->min)
            r->min = num;
        if (num > r->max)
            r->max = num;
        break;
    case NUM_EMPTY:
        r->empty++;
        break;
    case NUM_OVERFLOW:
        r->overflow++;
        break;
    default:
        r->skipped++;
    }
}

/* The common case of the number field, from its first byte: "[+-]digits[.digits]" of at most
 * 18 kept digits (no int64 overflow possible) right up to the delimiter, LF or the end.
 * Sets acc/nst to what feed() would have made of those bytes and returns the position of
 * the terminator; returns i itself (nothing consumed) for anything else, which the byte
 * loop then parses from the field's start. */
static inline size_t fast_num(const unsigned char *p, size_t i, size_t n, uint32_t scale,
                              unsigned char delim, uint64_t *acc, uint32_t *nst)
{
    size_t q = i, d0;
    uint32_t st = N_ANY, d;
    uint64_t a = 0;

    if (q < n && (p[q] == '-' || p[q] == '+')) {
        if (p[q] == '-')
            st |= N_NEG;
        q++;
    }
    d0 = q;
    for (; q < n && (d = p[q] - '0') < 10; q++)
        a = a * 10 + d;
    size_t nint = q - d0, nfrac = 0, kept = 0; /* fraction digits seen, and kept */
    if (q < n && p[q] == '.') {
        size_t f0 = ++q;
        st |= N_DOT;
        for (; q < n && q - f0 < scale && (d = p[q] - '0') < 10; q++)
            a = a * 10 + d;
        kept = q - f0;
        while (q < n && (unsigned)(p[q] - '0') < 10) /* past the scale: truncated */
            q++;
        nfrac = q - f0;
    }
    if (nint + nfrac == 0 || nint + kept > 18 || (q < n && p[q] != delim && p[q] != '\n'))
        return i;
    st |= N_DIG | (uint32_t)kept << 8;
    *acc = a;
    *nst = st;
    return q;
}

static struct result parse(const unsigned char *p, size_t n, uint32_t want, int header,
                           uint32_t scale, unsigned char delim)
{
    struct result r = {0, 0, 0, 0, 0, 0, INT64_MAX, INT64_MIN};
    unsigned char cls[256] = {0};
    size_t i = 0;
    uint32_t column = 0, nst = 0;
    uint64_t acc = 0;
    int64_t num = 0;
    int status = NUM_EMPTY;
    int inq = 0;  /* inside a quoted field */
    int pq = 0;   /* outside quotes, the last byte but CRs closed a quote */
    int seen = 0; /* the record has a byte other than CR */
    int skip = header;

    cls['"'] = C_QUOTE;
    cls['\n'] = C_LF;
    cls['\r'] = C_CR;
    cls[delim] = C_DELIM;

    if (want == 0) {
        size_t q = fast_num(p, i, n, scale, delim, &acc, &nst);
        seen = q != i;
        i = q;
    }
    while (i < n) {
        if (inq) { /* everything up to the next quote is content */
            if (column == want) {
                for (; i < n && p[i] != '"'; i++)
                    feed(&acc, &nst, p[i], scale);
            } else {
                while (i < n && p[i] != '"')
                    i++;
            }
            if (i == n)
                break;
            i++;
            inq = 0;
            pq = 1;
            continue;
        }
        unsigned c = p[i++];
        switch (cls[c]) {
        case C_ORD: /* a run of ordinary bytes */
            seen = 1;
            pq = 0;
            if (column == want) {
                feed(&acc, &nst, c, scale);
                for (; i < n && cls[p[i]] == C_ORD; i++)
                    feed(&acc, &nst, p[i], scale);
            } else {
                while (i < n && cls[p[i]] == C_ORD)
                    i++;
            }
            break;
        case C_QUOTE:
            seen = 1;
            if (pq) { /* "" : a literal quote, and quoted again */
                if (column == want)
                    feed(&acc, &nst, '"', scale);
                pq = 0;
            } else {
                pq = 1; /* irrelevant inside quotes; set again when they close */
            }
            inq = 1;
            break;
        case C_DELIM:
            if (column == want)
                status = num_end(acc, nst, scale, &num);
            column++;
            seen = 1;
            pq = 0;
            acc = 0;
            nst = 0;
            if (column == want)
                i = fast_num(p, i, n, scale, delim, &acc, &nst);
            break;
        case C_LF:
            if (column == want)
                status = num_end(acc, nst, scale, &num);
            if (column != 0 || seen) { /* else a blank line */
                if (skip)
                    skip = 0;
                else
                    record(&r, status, num);
            }
            status = NUM_EMPTY;
            column = 0;
            seen = 0;
            pq = 0;
            acc = 0;
            nst = 0;
            if (want == 0) {
                size_t q = fast_num(p, i, n, scale, delim, &acc, &nst);
                seen = q != i;
                i = q;
            }
            break;
        default: /* C_CR outside quotes: dropped */
            break;
        }
    }
    /* a last record without a newline */
    if (column == want)
        status = num_end(acc, nst, scale, &num);
    if ((column != 0 || seen) && !skip)
        record(&r, status, num);
    return r;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s FILE COLUMN HEADER(0|1) [REPEAT [SCALE [DELIM]]]\n", argv[0]);
        return 2;
    }
    long column = atol(argv[2]);
    int header = atoi(argv[3]);
    int repeat = argc > 4 ? atoi(argv[4]) : 1;
    int scale = argc > 5 ? atoi(argv[5]) : 4;
    unsigned char delim = argc > 6 ? (unsigned char)argv[6][0] : ',';
    if (column < 0 || column > INT32_MAX || scale < 0 || scale > MAX_SCALE || delim == '"' ||
        delim == '\r' || delim == '\n' || delim == 0) {
        fprintf(stderr, "%s: COLUMN must be 0..2^31-1, SCALE 0..%d, DELIM not a quote, CR, LF\n",
                argv[0], MAX_SCALE);
        return 2;
    }
    for (int k = 0; k < repeat; k++) {
        double t0 = now();
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) {
            perror(argv[1]);
            return 1;
        }
        struct stat st;
        fstat(fd, &st);
        struct result r = {0, 0, 0, 0, 0, 0, INT64_MAX, INT64_MIN};
        if (st.st_size > 0) {
            void *m = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            r = parse(m, st.st_size, (uint32_t)column, header, (uint32_t)scale, delim);
            munmap(m, st.st_size);
        }
        close(fd);
        double t = now() - t0;
        printf("%lld %lld %lld %lld %lld %lld %lld %lld %.17g %.9f\n", (long long)r.rows,
               (long long)r.count, (long long)r.sum, (long long)r.empty, (long long)r.skipped,
               (long long)r.overflow, (long long)r.min, (long long)r.max,
               r.count ? (double)((long double)r.sum / ((long double)r.count * pow10_[scale]))
                       : NAN, t);
    }
    return 0;
}
