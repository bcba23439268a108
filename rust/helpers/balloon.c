// SPDX-License-Identifier: GPL-2.0

/*
 * Helpers for rust/kernel/balloon.rs: the static inline parts of the balloon
 * core and of struct page that the Rust balloon abstraction needs, and the C
 * end of its migration callback.
 */

#include <linux/balloon.h>
#include <linux/build_bug.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/stddef.h>
#include <linux/swap.h>
#include <linux/vmstat.h>

__rust_helper void rust_helper_balloon_devinfo_init(struct balloon_dev_info *balloon)
{
	balloon_devinfo_init(balloon);
}

__rust_helper unsigned long rust_helper_balloon_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

/*
 * A free block of 2^order pages for the balloon, split into order-0 pages, if
 * the page allocator has one at hand: balloon_page_alloc()'s flags without
 * reclaim, since a balloon that finds no free block takes single pages instead
 * of compacting for one.
 *
 * Only while free memory stays above the watermarks (totalreserve_pages) by
 * two blocks: an allocation that may not reclaim goes down to the min
 * watermark, below which the single pages that follow would find the free
 * lists short and pages freed to the per-cpu lists out of reach (seen: 219 MiB
 * on one CPU's list after a process exited, and inflation stalled 64 MiB short
 * of a target the C driver reached). The last of free memory is left to
 * balloon_page_alloc(), which reclaims (and drains those lists) as C does.
 */
__rust_helper struct page *rust_helper_balloon_block_alloc(unsigned int order)
{
	gfp_t gfp = __GFP_NOMEMALLOC | __GFP_NORETRY | __GFP_NOWARN;
	struct page *page;

	if (global_zone_page_state(NR_FREE_PAGES) < totalreserve_pages + (2UL << order))
		return NULL;
	gfp |= IS_ENABLED(CONFIG_BALLOON_MIGRATION) ? GFP_HIGHUSER_MOVABLE : GFP_HIGHUSER;
	page = alloc_pages(gfp & ~__GFP_RECLAIM, order);
	if (page)
		split_page(page, order);
	return page;
}

/*
 * Free pages the page allocator would hand out singly before it splits a free
 * block of 2^@order pages: those in smaller buddy blocks and on the per-cpu
 * lists; and in *@free, all free pages. Over the zones movable allocations
 * use: a zone of less than a sixteenth of memory, such as x86's 16 MiB
 * ZONE_DMA kept for DMA by lowmem_reserve, is left out. Racy reads: an
 * estimate, for a policy.
 */
__rust_helper unsigned long rust_helper_balloon_free_below(unsigned int order,
							   unsigned long *free)
{
	unsigned long pages = 0, tiny = totalram_pages() / 16;
	struct zone *zone;
	unsigned int o;
	int cpu;

	*free = 0;
	for_each_populated_zone(zone) {
		if (zone_managed_pages(zone) < tiny)
			continue;
		*free += zone_page_state(zone, NR_FREE_PAGES);
		for (o = 0; o < order && o < NR_PAGE_ORDERS; o++) {
			/* Unlocked: it moves under zone->lock; an estimate will do. */
			pages += data_race(zone->free_area[o].nr_free) << o;
		}
		for_each_online_cpu(cpu) {
			/* Unlocked: it moves under the CPU's pcp lock; likewise. */
			pages += data_race(per_cpu_ptr(zone->per_cpu_pageset, cpu)->count);
		}
	}
	return pages;
}

/*
 * Up to @nr order-0 pages for the balloon, put at the start of @pages (all
 * NULL on entry), with balloon_page_alloc()'s flags; returns how many.
 *
 * The bulk allocator takes pages as single allocations do, from the per-cpu
 * list refilled from the smallest free blocks first, so an inflating balloon
 * fills the guest's holes and leaves its free 2 MiB blocks whole for huge pages
 * and compaction; but for a whole batch under one per-cpu lock. While the zone
 * is below its low watermark by @nr, it makes one single allocation instead,
 * which may reclaim as balloon_page_alloc() does, so the last of free memory
 * goes as with C.
 */
__rust_helper unsigned long rust_helper_balloon_pages_alloc_bulk(unsigned int nr,
								 struct page **pages)
{
	gfp_t gfp = __GFP_NOMEMALLOC | __GFP_NORETRY | __GFP_NOWARN;

	gfp |= IS_ENABLED(CONFIG_BALLOON_MIGRATION) ? GFP_HIGHUSER_MOVABLE : GFP_HIGHUSER;
	return alloc_pages_bulk(gfp, nr, pages);
}

/* Drops the balloon's reference, as release_pages_balloon() does in C. */
__rust_helper void rust_helper_balloon_put_page(struct page *page)
{
	put_page(page);
}

/* Links a page the caller owns into a list through page->lru. */
__rust_helper void rust_helper_balloon_list_push(struct list_head *head, struct page *page)
{
	list_add_tail(&page->lru, head);
}

/* Unlinks and returns the first page of a list linked through page->lru. */
__rust_helper struct page *rust_helper_balloon_list_pop(struct list_head *head)
{
	struct page *page = list_first_entry_or_null(head, struct page, lru);

	if (page)
		list_del(&page->lru);
	return page;
}

/* Snapshot of the number of pages isolated for migration. */
__rust_helper unsigned long
rust_helper_balloon_isolated_pages(const struct balloon_dev_info *b_dev_info)
{
	/*
	 * Racy by design: the counter is protected by the balloon core's lock,
	 * which is private to the core, so it can only be sampled.
	 */
	return data_race(READ_ONCE(b_dev_info->isolated_pages));
}

__rust_helper bool rust_helper_balloon_want_init_on_free(void)
{
	return want_init_on_free();
}

__rust_helper bool rust_helper_balloon_page_poisoning_enabled_static(void)
{
	return page_poisoning_enabled_static();
}
