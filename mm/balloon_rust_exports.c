// SPDX-License-Identifier: GPL-2.0
/*
 * Exports of the Rust balloon core (mm/balloon_rust.rs) to modules, as
 * mm/balloon.c exports them: Rust objects outside rust/ have no export
 * mechanism of their own, so the symbols they define are exported here,
 * the way rust/exports.c does it for the kernel crate.
 */

#include <linux/balloon.h>
#include <linux/export.h>

EXPORT_SYMBOL_GPL(balloon_page_alloc);
EXPORT_SYMBOL_GPL(balloon_page_enqueue);
EXPORT_SYMBOL_GPL(balloon_page_dequeue);
EXPORT_SYMBOL_GPL(balloon_page_list_enqueue);
EXPORT_SYMBOL_GPL(balloon_page_list_dequeue);
