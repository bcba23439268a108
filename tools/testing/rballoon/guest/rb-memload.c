// SPDX-License-Identifier: GPL-2.0
/*
 * rb-memload: guest memory workload for the rballoon stress suite.
 *
 *   rb-memload churn SECONDS MAX_MIB SEED
 *	Until SECONDS have passed: map an anonymous region of 1..MAX_MIB MiB (THP-aligned, with
 *	MADV_HUGEPAGE), write a pattern into every 4 KiB page, check the pattern, unmap it. Prints
 *	how many rounds and MiB it did. A page that does not read back what was written (a page
 *	the balloon handed to the host while it was in use, or one a migration corrupted) is
 *	reported and ends the run with status 2.
 *   rb-memload hog MIB
 *	Map MIB MiB, touch every page, check it, hold it for a second, exit. With the balloon's
 *	deflate-on-OOM this only succeeds if the balloon gives memory back under OOM.
 *
 * Exit status: 0 done, 1 usage or mmap failure, 2 corruption.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1UL << 20)
#define HPAGE (2UL << 20)
#define PAGE 4096UL

static uint64_t rng;

static uint64_t next_rand(void)
{
	/* xorshift64* */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ULL;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The value page @i of a region filled with @salt holds in its first and last word. */
static uint64_t pattern(uintptr_t addr, uint64_t salt)
{
	return (addr * 0x9e3779b97f4a7c15ULL) ^ salt;
}

/* Map @bytes aligned to a huge page so that THP can back it; NULL on failure. */
static unsigned char *map_region(size_t bytes, void **base, size_t *maplen)
{
	unsigned char *p;

	*maplen = bytes + HPAGE;
	p = mmap(NULL, *maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	*base = p;
	p = (unsigned char *)(((uintptr_t)p + HPAGE - 1) & ~(HPAGE - 1));
	/* Best effort: THP may be off or unavailable. */
	madvise(p, bytes, MADV_HUGEPAGE);
	return p;
}

/* Fill every page of [p, p + bytes), then check it; the number of bad pages. */
static unsigned long fill_and_check(unsigned char *p, size_t bytes, uint64_t salt)
{
	unsigned long bad = 0;
	size_t off;

	for (off = 0; off < bytes; off += PAGE) {
		uint64_t v = pattern((uintptr_t)(p + off), salt);

		memcpy(p + off, &v, sizeof(v));
		memcpy(p + off + PAGE - sizeof(v), &v, sizeof(v));
	}
	for (off = 0; off < bytes; off += PAGE) {
		uint64_t want = pattern((uintptr_t)(p + off), salt), head, tail;

		memcpy(&head, p + off, sizeof(head));
		memcpy(&tail, p + off + PAGE - sizeof(tail), sizeof(tail));
		if (head != want || tail != want) {
			if (bad < 5)
				printf("rb-memload: CORRUPTION at %p: %#llx/%#llx, wrote %#llx\n",
				       (void *)(p + off), (unsigned long long)head,
				       (unsigned long long)tail, (unsigned long long)want);
			bad++;
		}
	}
	return bad;
}

static int churn(double seconds, unsigned long max_mib, uint64_t seed)
{
	double end = now() + seconds;
	unsigned long rounds = 0, mib = 0, failed = 0, bad = 0;

	rng = seed | 1;
	while (now() < end) {
		size_t bytes = (1 + next_rand() % max_mib) * MIB, maplen;
		void *base;
		unsigned char *p = map_region(bytes, &base, &maplen);

		if (!p) {
			failed++;
			usleep(100000);
			continue;
		}
		bad += fill_and_check(p, bytes, next_rand());
		munmap(base, maplen);
		rounds++;
		mib += bytes / MIB;
		if (bad)
			break;
	}
	printf("rb-memload churn: %lu rounds, %lu MiB touched, %lu mmap failures, %lu bad pages\n",
	       rounds, mib, failed, bad);
	return bad ? 2 : 0;
}

static int hog(unsigned long mib)
{
	size_t bytes = mib * MIB, maplen;
	void *base;
	unsigned char *p = map_region(bytes, &base, &maplen);
	unsigned long bad;

	if (!p) {
		printf("rb-memload hog: mmap of %lu MiB failed: %s\n", mib, strerror(errno));
		return 1;
	}
	rng = (uintptr_t)p | 1;
	bad = fill_and_check(p, bytes, next_rand());
	sleep(1);
	munmap(base, maplen);
	printf("rb-memload hog: %lu MiB touched, %lu bad pages\n", mib, bad);
	return bad ? 2 : 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 5 && !strcmp(argv[1], "churn") && atof(argv[2]) > 0 && atol(argv[3]) > 0)
		return churn(atof(argv[2]), strtoul(argv[3], NULL, 0),
			     strtoull(argv[4], NULL, 0));
	if (argc == 3 && !strcmp(argv[1], "hog") && atol(argv[2]) > 0)
		return hog(strtoul(argv[2], NULL, 0));
	fprintf(stderr, "usage: rb-memload churn SECONDS MAX_MIB SEED | rb-memload hog MIB\n");
	return 1;
}
