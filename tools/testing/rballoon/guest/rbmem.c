// SPDX-License-Identifier: GPL-2.0
/*
 * rbmem: put the guest's memory into a known state for the harness.
 *
 *   rbmem touch MIB        write every page of MIB MiB of anonymous memory, then exit, which
 *                          frees it again (the host has had to back every page meanwhile)
 *   rbmem hold MIB         write MIB MiB, say "ready", then keep it until SIGTERM or SIGINT
 *   rbmem frag MIB KEEP    write MIB MiB, then give back all but about one page in every KEEP
 *                          (chosen at random, the same pages every run), say "ready" and keep
 *                          the rest until SIGTERM/SIGINT: the memory given back is holes between
 *                          pages still in use, KEEP - 1 pages long on average
 *   rbmem hog MIB [STEP]   write MIB MiB, one STEP MiB chunk (default 16) after the other, saying
 *                          how far it got after each chunk, then exit; the memory is mapped as
 *                          it goes, so under memory pressure each chunk is what must be found
 *
 * Every command ends its work with one line
 *   "rbmem <command> mib=<written> kept_mib=<still held> ms=<elapsed>"
 * (CLOCK_MONOTONIC since start) on stdout; `hold` and `frag` print "ready" after it. The guest's
 * transparent huge pages are "madvise" only, so every page here is a 4 KiB page of its own.
 *
 * Exit status: 0 on success (and after SIGTERM/SIGINT for hold and frag), 1 on a usage error,
 * 2 if memory could not be mapped. A hog the OOM killer picks dies of SIGKILL.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define MIB (1024UL * 1024UL)

static double start_ms;
static volatile sig_atomic_t stop;

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* Map `bytes` of anonymous memory, not backed yet. */
static char *map(size_t bytes)
{
	char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "rbmem: mmap of %zu MiB: %s\n", bytes / MIB, strerror(errno));
		exit(2);
	}
	return p;
}

/* Write one byte in page `i` of `p`, so that the page is backed. */
static void write_page(char *p, size_t i)
{
	p[i * PAGE] = (char)(i | 1);
}

/* Map `bytes` and write every page. */
static char *map_and_write(size_t bytes)
{
	char *p = map(bytes);

	for (size_t i = 0; i < bytes / PAGE; i++)
		write_page(p, i);
	return p;
}

/*
 * Whether the next page is one to keep: about one in `keep`, from a fixed xorshift sequence.
 * Not every `keep`-th page: compaction's free scanner samples a pageblock it expects little
 * from at a power-of-two stride (up to 32 pages), and with holes at a fixed period its samples
 * could all land on kept pages, block after block, so that it skipped every hole in the zone
 * (seen in about one run in eight with keep = 2: a pass moved a few hundred balloon pages
 * instead of some 50,000). Real fragmentation has no period.
 */
static int keep_next(size_t keep)
{
	static unsigned long long x = 0x9e3779b97f4a7c15ULL;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x % keep == 0;
}

/*
 * Write `bytes` worth of pages, about one in every `keep` into a mapping that is kept and the
 * others into a mapping that is then unmapped as a whole. Consecutive page faults get (mostly)
 * consecutive physical pages, so the pages given back are holes between kept frames. (The
 * guest kernel has no madvise(): tinyconfig leaves out ADVISE_SYSCALLS, and unmapping page by
 * page would need a mapping per kept page, beyond vm.max_map_count.) Both mappings are as
 * large as `bytes`; only the pages written are backed.
 */
static size_t fragment(size_t bytes, size_t keep)
{
	size_t pages = bytes / PAGE, k = 0, g = 0;
	char *kept = map(bytes), *given = map(bytes);

	for (size_t i = 0; i < pages; i++) {
		if (keep_next(keep))
			write_page(kept, k++);
		else
			write_page(given, g++);
	}
	if (munmap(given, bytes)) {
		fprintf(stderr, "rbmem: munmap: %s\n", strerror(errno));
		exit(2);
	}
	return k * PAGE;
}

static void report(const char *cmd, unsigned long written, unsigned long kept)
{
	printf("rbmem %s mib=%lu kept_mib=%lu ms=%.0f\n", cmd, written, kept, now_ms() - start_ms);
	fflush(stdout);
}

/* Say "ready" and keep the memory until SIGTERM or SIGINT. */
static int hold_until_signalled(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigset_t block, old;

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	/* Blocked until sigsuspend(), so a signal cannot slip in between the test and the wait. */
	sigprocmask(SIG_BLOCK, &block, &old);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	printf("ready\n");
	fflush(stdout);
	while (!stop)
		sigsuspend(&old);
	return 0;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: rbmem touch MIB | hold MIB | frag MIB KEEP | hog MIB [STEP]\n"
		"  MIB, STEP > 0 (MiB); KEEP >= 2 (keep one page in KEEP)\n");
	return 1;
}

/* A positive decimal number, or 0 if `s` is not one. */
static unsigned long number(const char *s)
{
	char *end;
	unsigned long v;

	if (!s || !*s)
		return 0;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end)
		return 0;
	return v;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";
	unsigned long mib = argc > 2 ? number(argv[2]) : 0;

	start_ms = now_ms();
	if (!mib)
		return usage();

	if (!strcmp(cmd, "touch") && argc == 3) {
		map_and_write(mib * MIB);
		report(cmd, mib, 0);
		return 0;
	}
	if (!strcmp(cmd, "hold") && argc == 3) {
		map_and_write(mib * MIB);
		report(cmd, mib, mib);
		return hold_until_signalled();
	}
	if (!strcmp(cmd, "frag") && argc == 4) {
		unsigned long keep = number(argv[3]);
		size_t kept;

		if (keep < 2)
			return usage();
		kept = fragment(mib * MIB, keep);
		report(cmd, mib, kept / MIB);
		return hold_until_signalled();
	}
	if (!strcmp(cmd, "hog") && (argc == 3 || argc == 4)) {
		unsigned long step = argc == 4 ? number(argv[3]) : 16, done = 0;

		if (!step)
			return usage();
		while (done < mib) {
			unsigned long n = mib - done < step ? mib - done : step;

			map_and_write(n * MIB);
			done += n;
			printf("rbmem hog progress mib=%lu\n", done);
			fflush(stdout);
		}
		report(cmd, mib, mib);
		return 0;
	}
	return usage();
}
