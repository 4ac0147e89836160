/* Types shared by kinds.c (BPF) and kinds_pack.c (host): the host compiler's layout is the
 * oracle for BTF decoding (x86-64 and BPF are both LP64, little-endian, same alignment). */
#ifndef KINDS_H
#define KINDS_H
#include <linux/types.h>

enum small { S_A = -2, S_B = 3 };
enum big { B_A = 1, B_B = 0xffffffffu };

struct fl {
	float f;
	double d;
	int __attribute__((btf_type_tag("user"))) *p;
};

union u {
	__u32 a;
	__u8 b[4];
};

struct bits {
	unsigned int low : 3;
	int mid : 5;
	unsigned int high : 24;
	signed char sc : 4;
	unsigned long long wide : 40;
	_Bool flag;
};

struct nest {
	struct bits b[2];
	enum small s;
	enum big g;
	char name[5];
	__s8 raw[3];
	union u un;
};

#endif
