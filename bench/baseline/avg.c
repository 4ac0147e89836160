/* The C baseline: average of one CSV column, the way a careful programmer writes it first.
 *
 * mmap the file and walk it one byte at a time with a small state machine (no SIMD, no
 * memchr, no threads), summing the column as fixed-point hundredths so the result is exact.
 * Usage: avg FILE COLUMN HEADER(0|1) [REPEAT]
 * Prints one line per repeat: "<rows> <sum_hundredths> <avg> <seconds>", the time covering
 * mmap, the parse and munmap (the file is expected in the page cache).
 */
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

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s FILE COLUMN HEADER(0|1) [REPEAT]\n", argv[0]);
        return 2;
    }
    int column = atoi(argv[2]), header = atoi(argv[3]);
    int repeat = argc > 4 ? atoi(argv[4]) : 1;
    for (int k = 0; k < repeat; k++) {
        double t0 = now();
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) {
            perror(argv[1]);
            return 1;
        }
        struct stat st;
        fstat(fd, &st);
        struct result r = {0, 0};
        if (st.st_size > 0) {
            void *m = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            r = parse(m, st.st_size, column, header);
            munmap(m, st.st_size);
        }
        close(fd);
        double t = now() - t0;
        printf("%lld %lld %.17g %.9f\n", (long long)r.rows, (long long)r.sum,
               r.rows ? r.sum / 100.0 / r.rows : 0.0, t);
    }
    return 0;
}
