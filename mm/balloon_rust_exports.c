// SPDX-License-Identifier: GPL-2.0
/*
 * Exports of the Rust balloon core (mm/balloon_rust.rs) to modules, as
 * mm/balloon.c exports them: Rust objects outside rust/ have no export
 * mechanism of their own, so the symbols they define are exported here,
 * the way rust/exports.c does it for the kernel crate.
 */

#include <linux/balloon.h>
#include <linux/export.h>
#include <linux/init.h>
#include <linux/spinlock.h>

#include "balloon_rust.h"

/*
 * The core's lock, as mm/balloon.c has it: initialised statically, so that
 * the first balloon call can take it whenever it comes.
 */
DEFINE_SPINLOCK(balloon_core_lock);

/*
 * The movable operations of balloon pages are registered before any
 * device_initcall, as mm/balloon.c registers them: arch/ links before mm/,
 * and a built-in balloon there (pseries CMM) inflates from a thread of its
 * own once it starts.
 */
static int __init balloon_core_init(void)
{
	return balloon_core_rust_init();
}
core_initcall(balloon_core_init);

EXPORT_SYMBOL_GPL(balloon_page_alloc);
EXPORT_SYMBOL_GPL(balloon_page_enqueue);
EXPORT_SYMBOL_GPL(balloon_page_dequeue);
EXPORT_SYMBOL_GPL(balloon_page_list_enqueue);
EXPORT_SYMBOL_GPL(balloon_page_list_dequeue);
