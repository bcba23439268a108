/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the C half of the Rust balloon core (mm/balloon_rust_exports.c) and
 * its Rust half (mm/balloon_rust.rs) share.
 */
#ifndef _MM_BALLOON_RUST_H
#define _MM_BALLOON_RUST_H

#include <linux/spinlock_types.h>

/* The core's lock: every balloon's page list and isolated count. */
extern spinlock_t balloon_core_lock;

/* Registers the balloon's movable operations; 0 or a negative errno. */
int balloon_core_rust_init(void);

#endif /* _MM_BALLOON_RUST_H */
