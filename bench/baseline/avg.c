/* The C baseline: average of one CSV column, the way a careful programmer writes it first.
 *
 * mmap the file and walk it one byte at a time with a small state machine (no SIMD, no
 * memchr, no threads), summing the column as fixed-point hundredths so the result is exact.
 * Usage: avg FILE COLUMN HEADER(0|1) [REPEAT [START END]...]
 * Without ranges the whole file is parsed. With them, each repeat parses the byte ranges
 * [START, END) in the order given and sums rows and hundredths over them; each range must be
 * line-aligned (START at 0 or just after a newline, END just after a newline or at the end of
 * the file: this is not checked), and the header line is skipped only in a range that starts
 * at 0. Two processes given one range each split a file between them (bench/jitbench.py).
 * Prints one line per repeat: "<rows> <sum_hundredths> <avg> <seconds>", the time covering
 * mmap, the parse (of all ranges) and munmap (the file is expected in the page cache).
 * Bad ranges (not in START END pairs, not integers, not START <= END <= file size): a
 * message on stderr and exit status 2.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct result {
    int64_t rows;
    int64_t sum;   /* hundredths */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Finish one field of the wanted column: scale to hundredths (fractions past two digits
 * are truncated, as stord's built-in does). */
static int64_t scaled(int64_t mant, int frac, int neg)
{
    while (frac < 2) {
        mant *= 10;
        frac++;
    }
    return neg ? -mant : mant;
}

static struct result parse(const unsigned char *p, size_t n, int column, int header)
{
    struct result r = {0, 0};
    size_t i = 0;
    if (header) {
        while (i < n && p[i] != '\n')
            i++;
        i++;
    }
    int col = 0, in_frac = 0, frac = 0, neg = 0, seen = 0;
    int64_t mant = 0;
    for (; i < n; i++) {
        unsigned char c = p[i];
        if (c == '\n') {
            if (seen) {
                r.sum += scaled(mant, frac, neg);
                r.rows++;
            }
            col = in_frac = frac = neg = seen = 0;
            mant = 0;
        } else if (c == ',') {
            col++;
        } else if (col == column) {
            if (c >= '0' && c <= '9') {
                if (!in_frac || frac < 2) {
                    mant = mant * 10 + (c - '0');
                    if (in_frac)
                        frac++;
                }
                seen = 1;
            } else if (c == '.') {
                in_frac = 1;
            } else if (c == '-') {
                neg = 1;
            }
        }
    }
    if (seen) { /* last line without a newline */
        r.sum += scaled(mant, frac, neg);
        r.rows++;
    }
    return r;
}

/* A byte offset from the command line: a non-negative decimal integer, nothing else. */
static int offset_arg(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        return 0;
    *out = v;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s FILE COLUMN HEADER(0|1) [REPEAT [START END]...]\n", argv[0]);
        return 2;
    }
    int column = atoi(argv[2]), header = atoi(argv[3]);
    int repeat = argc > 4 ? atoi(argv[4]) : 1;
    int nranges = argc > 5 ? (argc - 5) / 2 : 0;
    if (argc > 5 && (argc - 5) % 2) {
        fprintf(stderr, "%s: byte ranges come in pairs START END: %d number(s) after REPEAT\n",
                argv[0], argc - 5);
        return 2;
    }
    long long *start = malloc((nranges + 1) * sizeof *start);
    long long *end = malloc((nranges + 1) * sizeof *end);
    if (!start || !end) {
        perror("malloc");
        return 1;
    }
    for (int i = 0; i < nranges; i++) {
        const char *a = argv[5 + 2 * i], *b = argv[6 + 2 * i];
        if (!offset_arg(a, &start[i]) || !offset_arg(b, &end[i])) {
            fprintf(stderr, "%s: range %d: START and END must be byte offsets (integers >= 0), "
                    "not '%s' '%s'\n", argv[0], i + 1, a, b);
            return 2;
        }
        if (start[i] > end[i]) {
            fprintf(stderr, "%s: range %d: START %lld is after END %lld\n", argv[0], i + 1,
                    start[i], end[i]);
            return 2;
        }
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
        for (int i = 0; i < nranges; i++) {
            if (end[i] > st.st_size) {
                fprintf(stderr, "%s: range %d [%lld, %lld) ends past the end of %s (%lld bytes)\n",
                        argv[0], i + 1, start[i], end[i], argv[1], (long long)st.st_size);
                return 2;
            }
        }
        struct result r = {0, 0};
        if (st.st_size > 0) {
            void *m = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            if (nranges == 0)
                r = parse(m, st.st_size, column, header);
            for (int i = 0; i < nranges; i++) {
                struct result x = parse((const unsigned char *)m + start[i], end[i] - start[i],
                                        column, header && start[i] == 0);
                r.rows += x.rows;
                r.sum += x.sum;
            }
            munmap(m, st.st_size);
        }
        close(fd);
        double t = now() - t0;
        printf("%lld %lld %.17g %.9f\n", (long long)r.rows, (long long)r.sum,
               r.rows ? r.sum / 100.0 / r.rows : 0.0, t);
    }
    free(start);
    free(end);
    return 0;
}
