// SPDX-License-Identifier: GPL-2.0

/*
 * Helpers for owners of movable_ops pages written in Rust (rust/kernel/mm/movable.rs and the
 * Rust balloon core in mm/): the static inline struct page, list and vmstat operations they
 * need. Prefixed with movable_page_ so the names never clash with exported C functions.
 */

#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/page-flags.h>
#include <linux/vmstat.h>

__rust_helper unsigned long rust_helper_movable_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

__rust_helper struct page *rust_helper_movable_pfn_to_page(unsigned long pfn)
{
	return pfn_to_page(pfn);
}

/* The lockless test compaction does before it tries to isolate a page. */
__rust_helper bool rust_helper_movable_page_has_movable_ops(struct page *page)
{
	return page_has_movable_ops(page);
}

__rust_helper void rust_helper_movable_page_set_offline(struct page *page)
{
	__SetPageOffline(page);
}

__rust_helper bool rust_helper_movable_page_is_offline(struct page *page)
{
	return PageOffline(page);
}

__rust_helper void rust_helper_movable_page_set_movable_ops(struct page *page)
{
	SetPageMovableOps(page);
}

__rust_helper unsigned long rust_helper_movable_page_private(struct page *page)
{
	return page_private(page);
}

__rust_helper void rust_helper_movable_page_set_private(struct page *page, unsigned long private)
{
	set_page_private(page, private);
}

__rust_helper void rust_helper_movable_page_get(struct page *page)
{
	get_page(page);
}

__rust_helper void rust_helper_movable_page_put(struct page *page)
{
	put_page(page);
}

__rust_helper int rust_helper_movable_page_count(struct page *page)
{
	return page_count(page);
}

__rust_helper struct zone *rust_helper_movable_page_zone(struct page *page)
{
	return page_zone(page);
}

__rust_helper unsigned long rust_helper_movable_page_zone_managed(struct page *page)
{
	return zone_managed_pages(page_zone(page));
}

__rust_helper int rust_helper_movable_page_nid(struct page *page)
{
	return page_to_nid(page);
}

/* Adds a page at the head of a list linked through page->lru. */
__rust_helper void rust_helper_movable_page_list_add(struct page *page, struct list_head *head)
{
	list_add(&page->lru, head);
}

/* Unlinks a page from the list it is on through page->lru. */
__rust_helper void rust_helper_movable_page_list_del(struct page *page)
{
	list_del(&page->lru);
}

/* The first page of a list linked through page->lru, or NULL if it is empty. */
__rust_helper struct page *rust_helper_movable_page_list_first(struct list_head *head)
{
	return list_first_entry_or_null(head, struct page, lru);
}

__rust_helper bool rust_helper_movable_list_empty(const struct list_head *head)
{
	return list_empty(head);
}

/* Counts a vm event; the caller has preemption disabled (holds a spinlock). */
__rust_helper void rust_helper_movable_count_vm_event(enum vm_event_item item)
{
	__count_vm_event(item);
}

__rust_helper void
rust_helper_movable_mod_node_page_state(struct page *page, enum node_stat_item item, long delta)
{
	mod_node_page_state(page_pgdat(page), item, delta);
}

__rust_helper unsigned long rust_helper_movable_totalram_pages(void)
{
	return totalram_pages();
}

/*
 * A node counter summed over all nodes with the per-CPU deltas not folded in yet: exact while
 * nothing changes it, where global_node_page_state() may lag by the per-CPU thresholds.
 */
__rust_helper long rust_helper_movable_node_stat_exact(enum node_stat_item item)
{
	struct pglist_data *pgdat;
	long x = 0;

	for_each_online_pgdat(pgdat) {
#ifdef CONFIG_SMP
		int cpu;

		for_each_online_cpu(cpu)
			x += per_cpu_ptr(pgdat->per_cpu_nodestats, cpu)->vm_node_stat_diff[item];
#endif
		x += atomic_long_read(&pgdat->vm_stat[item]);
	}
	return x;
}
