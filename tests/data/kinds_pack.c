/* Host helper for tests/test_btf.py: fills a struct nest from command-line integers
 * (b[0] fields, b[1] fields, s, g, name, raw[3], un.a) and writes its bytes to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kinds.h"

int main(int argc, char **argv)
{
	struct nest n;
	int a = 1;

	if (argc != 1 + 12 + 2 + 1 + 3 + 1)
		return 2;
	memset(&n, 0, sizeof(n));
	for (int i = 0; i < 2; i++) {
		n.b[i].low = strtoll(argv[a++], 0, 0);
		n.b[i].mid = strtoll(argv[a++], 0, 0);
		n.b[i].high = strtoll(argv[a++], 0, 0);
		n.b[i].sc = strtoll(argv[a++], 0, 0);
		n.b[i].wide = strtoull(argv[a++], 0, 0);
		n.b[i].flag = strtoll(argv[a++], 0, 0);
	}
	n.s = strtoull(argv[a++], 0, 0);
	n.g = strtoull(argv[a++], 0, 0);
	strncpy(n.name, argv[a++], sizeof(n.name));
	for (int i = 0; i < 3; i++)
		n.raw[i] = strtoll(argv[a++], 0, 0);
	n.un.a = strtoull(argv[a++], 0, 0);
	fwrite(&n, sizeof(n), 1, stdout);
	return 0;
}
