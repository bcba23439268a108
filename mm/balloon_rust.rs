// SPDX-License-Identifier: GPL-2.0

//! The memory balloon core, in Rust (`CONFIG_BALLOON_CORE_RUST`).
//!
//! A drop-in replacement for `mm/balloon.c`: it defines and exports the functions of
//! `include/linux/balloon.h` with the same semantics, so `vmw_balloon`, the C `virtio_balloon`
//! and the Rust `rballoon` (through `kernel::balloon`) work unchanged on either core.
//!
//! - Each driver owns a `struct balloon_dev_info`. Its `pages` list, its `isolated_pages` count
//!   and the `page->private` of its pages change only under the core's lock ([`Locked`]), one for
//!   all devices (there is rarely more than one), as in C.
//! - Inflating (`balloon_page_enqueue()`, `balloon_page_list_enqueue()`) marks a page
//!   `PageOffline`, with balloon migration also `PG_movable_ops` and its device in
//!   `page->private`, puts it on the list, takes it out of the managed page count if the device
//!   asks for it, counts `BALLOON_INFLATE` and adds it to `NR_BALLOON_PAGES`.
//! - Deflating (`balloon_page_dequeue()`, `balloon_page_list_dequeue()`) takes pages off the list,
//!   clears `page->private` and undoes the accounting; pages isolated for migration are not on
//!   the list, so a dequeue can return fewer pages than the balloon holds.
//! - With `CONFIG_BALLOON_MIGRATION` the isolate / migrate / putback operations of all
//!   `PageOffline` pages are [`BalloonMops`], registered through
//!   [`kernel::mm::movable::Registration`] when the core starts. Migration asks the device's
//!   `migratepage` callback and then swaps the pages in the balloon, fixing up the managed page
//!   count (and `NR_BALLOON_PAGES`) when the new page is in another zone (node).
//!
//! The lock is a plain spinlock where C takes it with `spin_lock_irqsave()`: no balloon function
//! is called from interrupt context (drivers inflate and deflate from work items and notifiers,
//! compaction migrates from process context), so there is nothing to exclude interrupts for.
//!
//! The lock is C's `DEFINE_SPINLOCK(balloon_core_lock)` (`balloon_rust_exports.c`), initialised
//! statically as `mm/balloon.c`'s is: usable by the first balloon call whenever it comes. The
//! movable operations are registered at `core_initcall` time, as `mm/balloon.c` does, before
//! every `device_initcall`: `arch/` links before `mm/`, and a built-in balloon of its (pseries
//! CMM) starts inflating from a thread of its own.

use core::ptr;
use kernel::{
    bindings,
    ffi::{c_int, c_ulong},
    prelude::*,
    sync::{SpinLock, SpinLockGuard},
};

#[cfg(CONFIG_BALLOON_MIGRATION)]
use kernel::mm::movable::{
    CandidatePage, IsolateMode, IsolatedPage, MigrateMode, MovableOps, PageType, Registration,
    TargetPage,
};

/// The prefix of the core's messages (what `module!` defines for a module; the core is no
/// module: it starts from a `core_initcall`).
const __LOG_PREFIX: &[u8] = b"balloon_core\0";

extern "C" {
    /// The core's lock, defined with `DEFINE_SPINLOCK()` in `balloon_rust_exports.c`.
    static mut balloon_core_lock: bindings::spinlock_t;
}

/// The core's one lock for all devices (see [`Locked`]).
fn balloon_lock() -> &'static SpinLock<()> {
    // SAFETY: `balloon_core_lock` is a spinlock initialised statically by `DEFINE_SPINLOCK()`,
    // never freed; it is only ever used as a lock, through `SpinLock`.
    unsafe { SpinLock::from_raw(&raw mut balloon_core_lock) }
}

/// Proof that the core's lock is held: every change of a balloon's list, of its
/// `isolated_pages` or of a balloon page's `page->private` takes one.
type Locked = SpinLockGuard<'static, ()>;

// The exported functions are the ones `include/linux/balloon.h` declares: a signature that drifts
// from the header fails to build here.
const _: () = {
    let _: [unsafe extern "C" fn() -> *mut bindings::page; 2] =
        [bindings::balloon_page_alloc, balloon_page_alloc];
    let _: [unsafe extern "C" fn(*mut bindings::balloon_dev_info, *mut bindings::page); 2] =
        [bindings::balloon_page_enqueue, balloon_page_enqueue];
    let _: [unsafe extern "C" fn(*mut bindings::balloon_dev_info) -> *mut bindings::page; 2] =
        [bindings::balloon_page_dequeue, balloon_page_dequeue];
    let _: [unsafe extern "C" fn(
        *mut bindings::balloon_dev_info,
        *mut bindings::list_head,
    ) -> usize; 2] = [
        bindings::balloon_page_list_enqueue,
        balloon_page_list_enqueue,
    ];
    let _: [unsafe extern "C" fn(
        *mut bindings::balloon_dev_info,
        *mut bindings::list_head,
        usize,
    ) -> usize; 2] = [
        bindings::balloon_page_list_dequeue,
        balloon_page_list_dequeue,
    ];
};

/// Adds `delta` pages of `page`'s node to `NR_BALLOON_PAGES`.
///
/// # Safety
///
/// `page` must be a valid page.
unsafe fn mod_balloon_pages(page: *mut bindings::page, delta: i64) {
    // SAFETY: `page` is valid per the safety requirements.
    unsafe {
        bindings::movable_mod_node_page_state(
            page,
            bindings::node_stat_item_NR_BALLOON_PAGES,
            delta as isize,
        )
    };
}

/// Counts one balloon vm event.
fn count_event(_lock: &Locked, item: bindings::vm_event_item) {
    // SAFETY: `__count_vm_event()` is a `raw_cpu_inc()` of a per-CPU counter, which any context
    // may call. Where holding the spinlock does not disable preemption (PREEMPT_RT) an increment
    // can be lost to a migration between CPUs: the count is statistics, as in C's balloon.c.
    unsafe { bindings::movable_count_vm_event(item) };
}

/// The balloon device a page is inflated in: its `page->private`, or NULL if it is not in one.
///
/// # Safety
///
/// `page` must be a valid page.
unsafe fn owner(_lock: &Locked, page: *mut bindings::page) -> *mut bindings::balloon_dev_info {
    // SAFETY: `page` is valid per the safety requirements; the lock keeps the value stable.
    unsafe { bindings::movable_page_private(page) as *mut bindings::balloon_dev_info }
}

/// Marks `page` as a balloon page of `b` and puts it on the balloon list.
///
/// # Safety
///
/// `b` must be an initialised `balloon_dev_info`; `page` a page the balloon now holds a
/// reference to, not in any balloon, whose `lru` is unused.
unsafe fn insert(
    _lock: &mut Locked,
    b: *mut bindings::balloon_dev_info,
    page: *mut bindings::page,
) {
    // SAFETY: Per the safety requirements; `pages` and `page->private` are changed under the
    // lock, which `_lock` proves held.
    unsafe {
        bindings::movable_page_set_offline(page);
        if cfg!(CONFIG_BALLOON_MIGRATION) {
            // From now on compaction may find the page and isolate it through `BalloonMops`.
            bindings::movable_page_set_movable_ops(page);
            bindings::movable_page_set_private(page, b as c_ulong);
        }
        bindings::movable_page_list_add(page, &raw mut (*b).pages);
    }
}

/// Makes a page that left the balloon list impossible to isolate, before it is freed.
///
/// `PageOffline` and `PG_movable_ops` stay until the page allocator gets the page back: the
/// lockless scanner may look at any time, and it is the missing owner that turns it away.
///
/// # Safety
///
/// `page` must be a balloon page that is on no balloon list and not isolated.
unsafe fn finalize(_lock: &mut Locked, page: *mut bindings::page) {
    if cfg!(CONFIG_BALLOON_MIGRATION) {
        // SAFETY: `page` is valid; `page->private` of balloon pages changes under the lock.
        unsafe { bindings::movable_page_set_private(page, 0) };
    }
}

/// Inflates `page` into `b`: the list and all the accounting.
///
/// # Safety
///
/// As for [`insert`].
unsafe fn enqueue_one(
    lock: &mut Locked,
    b: *mut bindings::balloon_dev_info,
    page: *mut bindings::page,
) {
    // SAFETY: Per the safety requirements.
    unsafe { insert(lock, b, page) };
    // SAFETY: `b` is initialised; the driver sets the flag before it enqueues.
    if unsafe { (*b).adjust_managed_page_count } {
        // SAFETY: `page` is a valid page.
        unsafe { bindings::adjust_managed_page_count(page, -1) };
    }
    count_event(lock, bindings::vm_event_item_BALLOON_INFLATE);
    // SAFETY: `page` is a valid page.
    unsafe { mod_balloon_pages(page, 1) };
}

/// Allocates a page for the balloon (see `balloon_page_alloc()` in C).
///
/// Movable memory when balloon pages can migrate (compaction can then move them out of the way),
/// and no retries, warnings or emergency reserves: a balloon simply tries again later.
#[no_mangle]
pub extern "C" fn balloon_page_alloc() -> *mut bindings::page {
    let gfp = if cfg!(CONFIG_BALLOON_MIGRATION) {
        bindings::GFP_HIGHUSER_MOVABLE
    } else {
        bindings::GFP_HIGHUSER
    };
    let gfp = gfp | bindings::__GFP_NOMEMALLOC | bindings::__GFP_NORETRY | bindings::__GFP_NOWARN;
    // SAFETY: An order-0 allocation with valid flags has no other requirement.
    unsafe { bindings::alloc_pages(gfp, 0) }
}

/// Inflates one page allocated with `balloon_page_alloc()` into `b_dev_info`.
///
/// # Safety
///
/// `b_dev_info` must be initialised by `balloon_devinfo_init()`; `page` must come from
/// `balloon_page_alloc()`, be unused by the caller (its reference moves to the balloon) and have
/// an unused `lru`.
#[no_mangle]
pub unsafe extern "C" fn balloon_page_enqueue(
    b_dev_info: *mut bindings::balloon_dev_info,
    page: *mut bindings::page,
) {
    let mut lock = balloon_lock().lock();
    // SAFETY: Per the safety requirements.
    unsafe { enqueue_one(&mut lock, b_dev_info, page) };
}

/// Inflates every page of `pages` (linked through `lru`) into `b_dev_info`; returns how many.
///
/// # Safety
///
/// `b_dev_info` as for `balloon_page_enqueue()`; `pages` a valid list of pages that each satisfy
/// its requirements on `page`, except that `lru` links them on `pages`.
#[no_mangle]
pub unsafe extern "C" fn balloon_page_list_enqueue(
    b_dev_info: *mut bindings::balloon_dev_info,
    pages: *mut bindings::list_head,
) -> usize {
    let mut lock = balloon_lock().lock();
    let mut n = 0;
    loop {
        // SAFETY: `pages` is a valid list of pages per the safety requirements.
        let page = unsafe { bindings::movable_page_list_first(pages) };
        if page.is_null() {
            break;
        }
        // SAFETY: `page` is on `pages`; once unlinked its `lru` is unused and the page satisfies
        // the requirements of `enqueue_one`.
        unsafe {
            bindings::movable_page_list_del(page);
            enqueue_one(&mut lock, b_dev_info, page);
        }
        n += 1;
    }
    n
}

/// Deflates up to `n_req_pages` pages of `b_dev_info` onto `pages`; returns how many.
///
/// Fewer than requested when the balloon holds fewer, or while some are isolated for migration.
/// The caller owns the pages (the balloon's reference) and frees them once the host knows.
///
/// # Safety
///
/// `b_dev_info` must be initialised by `balloon_devinfo_init()`, `pages` a valid list head.
#[no_mangle]
pub unsafe extern "C" fn balloon_page_list_dequeue(
    b_dev_info: *mut bindings::balloon_dev_info,
    pages: *mut bindings::list_head,
    n_req_pages: usize,
) -> usize {
    let mut lock = balloon_lock().lock();
    let mut n = 0;
    while n < n_req_pages {
        // SAFETY: The balloon list is valid and changes only under the lock, which is held.
        let page = unsafe { bindings::movable_page_list_first(&raw mut (*b_dev_info).pages) };
        if page.is_null() {
            break;
        }
        // SAFETY: `page` is on the balloon list: a balloon page that is not isolated. Unlinked
        // and with its owner cleared in the same critical section, it cannot be isolated any
        // more, and its `lru` is free for the caller's list.
        unsafe {
            bindings::movable_page_list_del(page);
            if (*b_dev_info).adjust_managed_page_count {
                bindings::adjust_managed_page_count(page, 1);
            }
            finalize(&mut lock, page);
        }
        count_event(&lock, bindings::vm_event_item_BALLOON_DEFLATE);
        // SAFETY: `page` is valid; the caller's list is valid per the safety requirements.
        unsafe {
            bindings::movable_page_list_add(page, pages);
            mod_balloon_pages(page, -1);
        }
        n += 1;
    }
    n
}

/// Deflates one page of `b_dev_info`, or returns NULL if none is on the list.
///
/// As in C, an empty list is expected only while pages are isolated for migration: with no page
/// at all the caller's accounting is wrong. C `BUG()`s then; this warns and returns NULL, which
/// the in-tree drivers treat as "stop deflating", so nothing loops forever.
///
/// # Safety
///
/// `b_dev_info` must be initialised by `balloon_devinfo_init()`.
#[no_mangle]
pub unsafe extern "C" fn balloon_page_dequeue(
    b_dev_info: *mut bindings::balloon_dev_info,
) -> *mut bindings::page {
    let head = core::pin::pin!(kernel::types::Opaque::<bindings::list_head>::uninit());
    let head = head.get();
    // SAFETY: `head` is valid for writes and pinned until the end of the function.
    unsafe { bindings::INIT_LIST_HEAD(head) };
    // SAFETY: `b_dev_info` per the safety requirements, `head` a valid empty list.
    if unsafe { balloon_page_list_dequeue(b_dev_info, head, 1) } == 1 {
        // SAFETY: `head` holds exactly the dequeued page; unlink it so the caller gets a page
        // whose `lru` points at nothing on this stack.
        return unsafe {
            let page = bindings::movable_page_list_first(head);
            bindings::movable_page_list_del(page);
            page
        };
    }
    let _lock = balloon_lock().lock();
    // SAFETY: The balloon list and count change only under the lock, which is held.
    let lost = unsafe {
        bindings::movable_list_empty(&raw const (*b_dev_info).pages)
            && (*b_dev_info).isolated_pages == 0
    };
    if lost {
        pr_err!("balloon: dequeue from a balloon with no page: the caller's count is wrong\n");
        kernel::warn_on!(true);
    }
    ptr::null_mut()
}

/// The isolate / migrate / putback operations of inflated balloon pages.
#[cfg(CONFIG_BALLOON_MIGRATION)]
struct BalloonMops;

#[cfg(CONFIG_BALLOON_MIGRATION)]
// SAFETY: `isolate` takes a page off its balloon's list (the only list of the core's that uses
// `page->lru`) under the balloon lock before returning `true`, and the page is put on a list
// again only in `putback`; `migrate` returns `Ok(())` once the balloon has let go of `src` (the
// old page is off every list and its owner pointer cleared), as `balloon_page_migrate()` does.
unsafe impl MovableOps for BalloonMops {
    fn isolate(page: &CandidatePage<'_>, _mode: IsolateMode) -> bool {
        let lock = balloon_lock().lock();
        // SAFETY: `page` is a valid page.
        let b = unsafe { owner(&lock, page.as_raw()) };
        // No owner: still being inflated, or deflated and on the driver's list to be freed.
        if b.is_null() {
            return false;
        }
        // SAFETY: An owned page is on the list of its balloon `b`, which is alive while it holds
        // pages; both change under the lock, which is held.
        unsafe {
            // A device that cannot migrate keeps its pages (C would call a NULL callback).
            if (*b).migratepage.is_none() {
                return false;
            }
            bindings::movable_page_list_del(page.as_raw());
            (*b).isolated_pages += 1;
        }
        true
    }

    fn putback(page: &IsolatedPage<'_>) {
        let lock = balloon_lock().lock();
        // SAFETY: `page` is a valid page.
        let b = unsafe { owner(&lock, page.as_raw()) };
        // An isolated page cannot be deflated, so it still has its balloon.
        if kernel::warn_on!(b.is_null()) {
            return;
        }
        // SAFETY: `b` is the live balloon the page was isolated from; its list and count change
        // under the lock, and the isolation ends here, so `lru` is ours again.
        unsafe {
            bindings::movable_page_list_add(page.as_raw(), &raw mut (*b).pages);
            (*b).isolated_pages -= 1;
        }
    }

    fn migrate(dst: &TargetPage<'_>, src: &IsolatedPage<'_>, mode: MigrateMode) -> Result {
        let (src, dst) = (src.as_raw(), dst.as_raw());
        let (b, migratepage) = {
            let lock = balloon_lock().lock();
            // SAFETY: `src` is a valid page.
            let b = unsafe { owner(&lock, src) };
            if kernel::warn_on!(b.is_null()) {
                return Err(EAGAIN);
            }
            // SAFETY: `b` is the live balloon `src` was isolated from.
            (b, unsafe { (*b).migratepage })
        };
        // `isolate` refused pages of devices without a callback.
        let Some(migratepage) = migratepage else {
            return Err(EAGAIN);
        };
        // SAFETY: The driver's callback, with its device and two locked pages, as C calls it.
        // Not under the lock: drivers talk to the host here and may sleep.
        let rc: c_int = unsafe { migratepage(b, dst, src, mode.as_raw()) };
        if rc < 0 && rc != ENOENT.to_errno() {
            return Err(Error::from_errno(rc));
        }

        let mut lock = balloon_lock().lock();
        // SAFETY: `b` is alive (it holds `src`, which is isolated); its flag is plain data.
        let adjust = unsafe { (*b).adjust_managed_page_count };
        if rc == 0 {
            // The new page replaces the old one in the balloon, with a reference of its own.
            // SAFETY: `dst` is a fresh page whose `lru` is unused; the balloon takes a
            // reference before it publishes the page on its list.
            unsafe {
                bindings::movable_page_get(dst);
                insert(&mut lock, b, dst);
            }
            count_event(&lock, bindings::vm_event_item_BALLOON_MIGRATE);
            // SAFETY: Both pages are valid.
            unsafe {
                if adjust && bindings::movable_page_zone(src) != bindings::movable_page_zone(dst) {
                    // The balloon's hole moved to another zone: fix up both zones' counts.
                    bindings::adjust_managed_page_count(src, 1);
                    bindings::adjust_managed_page_count(dst, -1);
                }
                if bindings::movable_page_nid(src) != bindings::movable_page_nid(dst) {
                    // And `NR_BALLOON_PAGES` is per node.
                    mod_balloon_pages(src, -1);
                    mod_balloon_pages(dst, 1);
                }
            }
        } else {
            // The driver deflated the old page without inflating the new one.
            count_event(&lock, bindings::vm_event_item_BALLOON_DEFLATE);
            // SAFETY: `src` is a valid page.
            unsafe {
                if adjust {
                    bindings::adjust_managed_page_count(src, 1);
                }
                mod_balloon_pages(src, -1);
            }
        }
        // SAFETY: `b` is alive; its count changes under the lock. `src` leaves the balloon: it
        // is isolated, so on no list, and with its owner cleared it can never be isolated again.
        unsafe {
            (*b).isolated_pages -= 1;
            finalize(&mut lock, src);
        }
        drop(lock);
        // SAFETY: Drops the balloon's reference to the old page; the migration core frees it
        // when it drops its own.
        unsafe { bindings::movable_page_put(src) };
        Ok(())
    }
}

/// Starts the core: registers the balloon's movable operations, at `core_initcall` time (called
/// by `balloon_core_init()` in `balloon_rust_exports.c`, once).
#[no_mangle]
pub extern "C" fn balloon_core_rust_init() -> c_int {
    #[cfg(CONFIG_BALLOON_MIGRATION)]
    {
        // SAFETY: The core is built in and the registration is never dropped (forgotten just
        // below), so no balloon page can outlive it.
        match unsafe { Registration::<BalloonMops>::new(PageType::Offline) } {
            // The operations stay registered for the lifetime of the kernel.
            Ok(registration) => core::mem::forget(registration),
            Err(e) => return e.to_errno(),
        }
    }
    0
}
