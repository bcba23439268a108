// SPDX-License-Identifier: GPL-2.0
/*
 * rbbench: guest-side memory workloads for `rballoon bench`.
 *
 *   rbbench touch MIB   write every page of MIB MiB of anonymous memory, then exit (the pages go
 *                       back to the guest's free lists, but the host has had to back them)
 *   rbbench hold MIB    write MIB MiB, print "ready", then sleep until killed
 *   rbbench hog MIB     write MIB MiB as fast as possible and exit; under memory pressure this is
 *                       what waits for the balloon to deflate
 *
 * Every command prints one line "<command> mib=<n> ms=<elapsed>" (CLOCK_MONOTONIC) once the memory
 * is written. Exit status 0 on success, 1 on a usage error, 2 if the memory could not be mapped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Map and write `bytes`; one store per page is enough for the host to have to back it. */
static void write_pages(size_t bytes)
{
	char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "rbbench: mmap %zu bytes: %s\n", bytes, strerror(errno));
		exit(2);
	}
	for (size_t off = 0; off < bytes; off += PAGE)
		p[off] = (char)(off / PAGE) | 1;
}

static void wait_for_kill(void)
{
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}

static int usage(void)
{
	fprintf(stderr, "usage: rbbench touch|hold|hog MIB\n");
	return 1;
}

int main(int argc, char **argv)
{
	const char *cmd;
	unsigned long mib;
	size_t bytes;
	double t0, ms;
	char *end;

	if (argc != 3)
		return usage();
	cmd = argv[1];
	mib = strtoul(argv[2], &end, 10);
	if (*end || mib == 0)
		return usage();
	bytes = (size_t)mib << 20;

	if (strcmp(cmd, "touch") && strcmp(cmd, "hold") && strcmp(cmd, "hog"))
		return usage();

	t0 = now_ms();
	write_pages(bytes);
	ms = now_ms() - t0;
	printf("%s mib=%lu ms=%.1f\n", cmd, mib, ms);
	fflush(stdout);

	if (!strcmp(cmd, "hold"))
		wait_for_kill();
	return 0;
}
