// SPDX-License-Identifier: GPL-2.0

//! KUnit tests of the memory balloon core (`CONFIG_BALLOON_CORE_KUNIT_TEST`).
//!
//! They drive a balloon the way drivers and compaction do: the functions of
//! `include/linux/balloon.h` for inflation and deflation, and `isolate_movable_ops_page()`,
//! `migrate_pages()` and `putback_movable_pages()` for migration, on real pages. Nothing here
//! knows which core is built, so the same suites check the C core (`mm/balloon.c`) and the Rust
//! core (`mm/balloon_rust.rs`); the one place they differ on purpose is spelled out in
//! `migrate_enoent_deflates_the_old_page`.

use core::ptr;
use kernel::{
    bindings,
    ffi::{c_int, c_ulong},
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc,
    },
    time::{delay::fsleep, Delta, Instant, Monotonic},
    types::Opaque,
    workqueue::{self, impl_has_work, new_work, Work, WorkItem},
};

/// The prefix of this crate's `pr_*!` messages (a `module!` would define it).
const __LOG_PREFIX: &[u8] = b"balloon_core_kunit\0";

/// A balloon device whose migration callback answers what the test asks.
///
/// # Invariants
///
/// `info` is initialised by `balloon_devinfo_init()`, with `migratepage` set to
/// [`test_migratepage`] under balloon migration. It is the first field, so a pointer to it is a
/// pointer to the `TestBalloon`.
#[repr(C)]
#[pin_data(PinnedDrop)]
struct TestBalloon {
    #[pin]
    info: Opaque<bindings::balloon_dev_info>,
    /// 0, or the negative errno the callback returns.
    answer: Atomic<i32>,
    /// With `answer == 0`: also refuse every `eagain_every`-th call with `EAGAIN` (0: never).
    eagain_every: Atomic<usize>,
    calls: Atomic<usize>,
    migrated: Atomic<usize>,
    last_new: Atomic<usize>,
    last_old: Atomic<usize>,
}

impl TestBalloon {
    fn new(adjust_managed_page_count: bool) -> Result<Pin<KBox<Self>>> {
        let b = KBox::pin_init(
            pin_init!(Self {
                info: Opaque::uninit(),
                answer: Atomic::new(0),
                eagain_every: Atomic::new(0),
                calls: Atomic::new(0),
                migrated: Atomic::new(0),
                last_new: Atomic::new(0),
                last_old: Atomic::new(0),
            }),
            GFP_KERNEL,
        )?;
        let info = b.info.get();
        // SAFETY: `info` is valid for writes and not shared with the core yet.
        unsafe {
            bindings::balloon_devinfo_init(info);
            (*info).adjust_managed_page_count = adjust_managed_page_count;
            if cfg!(CONFIG_BALLOON_MIGRATION) {
                (*info).migratepage = Some(test_migratepage);
            }
        }
        Ok(b)
    }

    fn raw(&self) -> *mut bindings::balloon_dev_info {
        self.info.get()
    }

    fn isolated(&self) -> usize {
        // SAFETY: A racy sample of a plain counter, as the Rust balloon API takes it.
        unsafe { bindings::balloon_isolated_pages(self.raw()) }
    }

    fn enqueue(&self) -> Result<*mut bindings::page> {
        // SAFETY: No preconditions.
        let page = unsafe { bindings::balloon_page_alloc() };
        if page.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: A fresh page from `balloon_page_alloc()` into an initialised balloon.
        unsafe { bindings::balloon_page_enqueue(self.raw(), page) };
        Ok(page)
    }

    /// Deflates up to `n` pages, frees them and returns their page frame numbers.
    fn dequeue(&self, n: usize) -> Result<KVec<usize>> {
        let mut pfns = KVec::new();
        with_list(|head| -> Result {
            // SAFETY: An initialised balloon and an empty list.
            let got = unsafe { bindings::balloon_page_list_dequeue(self.raw(), head, n) };
            for _ in 0..got {
                let page = pop(head).ok_or(EINVAL)?;
                pfns.push(pfn(page), GFP_KERNEL)?;
                // SAFETY: The balloon's reference, handed over by the dequeue.
                unsafe { bindings::movable_page_put(page) };
            }
            assert!(pop(head).is_none());
            Ok(())
        })?;
        Ok(pfns)
    }
}

#[pinned_drop]
impl PinnedDrop for TestBalloon {
    fn drop(self: Pin<&mut Self>) {
        // Every test empties its balloon; if an assertion failed half-way, free what is left.
        while self.dequeue(64).map(|p| !p.is_empty()).unwrap_or(false) {}
    }
}

/// The `migratepage` callback of every [`TestBalloon`].
///
/// # Safety
///
/// `b` must be the `info` of a live `TestBalloon`; the pages valid for the call.
unsafe extern "C" fn test_migratepage(
    b: *mut bindings::balloon_dev_info,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    _mode: bindings::migrate_mode,
) -> c_int {
    // SAFETY: `info` is the first field of the `repr(C)` `TestBalloon` (type invariant), which is
    // alive per the safety requirements.
    let this = unsafe { &*b.cast::<TestBalloon>() };
    let n = this.calls.fetch_add(1, Relaxed) + 1;
    this.last_new.store(pfn(newpage), Relaxed);
    this.last_old.store(pfn(page), Relaxed);
    let answer = this.answer.load(Relaxed);
    let every = this.eagain_every.load(Relaxed);
    if answer == 0 && every != 0 && n % every == 0 {
        return EAGAIN.to_errno();
    }
    if answer == 0 {
        this.migrated.add(1, Relaxed);
    }
    answer
}

fn pfn(page: *mut bindings::page) -> usize {
    // SAFETY: Only called with valid pages; `page_to_pfn()` is arithmetic.
    unsafe { bindings::movable_page_to_pfn(page) }
}

fn page_count(page: *mut bindings::page) -> i32 {
    // SAFETY: Only called with pages the test holds a reference to.
    unsafe { bindings::movable_page_count(page) }
}

/// A list head on the stack for the duration of `f`.
fn with_list<R>(f: impl FnOnce(*mut bindings::list_head) -> R) -> R {
    let head = core::pin::pin!(Opaque::<bindings::list_head>::uninit());
    // SAFETY: Valid for writes, and pinned while `f` uses it.
    unsafe { bindings::INIT_LIST_HEAD(head.get()) };
    f(head.get())
}

fn pop(head: *mut bindings::list_head) -> Option<*mut bindings::page> {
    // SAFETY: Only called with valid lists of pages linked through `lru`.
    let page = unsafe { bindings::movable_page_list_first(head) };
    if page.is_null() {
        return None;
    }
    // SAFETY: `page` is on the list.
    unsafe { bindings::movable_page_list_del(page) };
    Some(page)
}

/// The balloon counters: vm events, `NR_BALLOON_PAGES` and the managed page count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    inflate: u64,
    deflate: u64,
    migrate: u64,
    balloon_pages: i64,
    totalram: u64,
}

impl Counters {
    fn now() -> Result<Self> {
        const N: usize = bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize;
        let mut events: KBox<[c_ulong; N]> = KBox::new([0; N], GFP_KERNEL)?;
        // SAFETY: `events` has room for every event.
        unsafe { bindings::all_vm_events(events.as_mut_ptr()) };
        let event = |item: bindings::vm_event_item| events[item as usize] as u64;
        Ok(Self {
            inflate: event(bindings::vm_event_item_BALLOON_INFLATE),
            deflate: event(bindings::vm_event_item_BALLOON_DEFLATE),
            #[cfg(CONFIG_BALLOON_MIGRATION)]
            migrate: event(bindings::vm_event_item_BALLOON_MIGRATE),
            #[cfg(not(CONFIG_BALLOON_MIGRATION))]
            migrate: 0,
            // SAFETY: Only reads counters.
            balloon_pages: unsafe {
                bindings::movable_node_stat_exact(bindings::node_stat_item_NR_BALLOON_PAGES)
            } as i64,
            // SAFETY: Only reads a counter.
            totalram: unsafe { bindings::movable_totalram_pages() } as u64,
        })
    }

    /// What changed since `self`: (inflate, deflate, migrate, balloon pages, managed pages).
    fn delta(&self) -> Result<(u64, u64, u64, i64, i64)> {
        let now = Self::now()?;
        Ok((
            now.inflate - self.inflate,
            now.deflate - self.deflate,
            now.migrate - self.migrate,
            now.balloon_pages - self.balloon_pages,
            now.totalram as i64 - self.totalram as i64,
        ))
    }
}

/// Isolates `page` as compaction does; `true` if it worked.
#[cfg(CONFIG_BALLOON_MIGRATION)]
fn isolate(page: *mut bindings::page) -> bool {
    // SAFETY: Any page may be passed: isolation takes its own reference or fails.
    unsafe { bindings::isolate_movable_ops_page(page, 0) }
}

/// `new_folio_t` for `migrate_pages()`: a fresh page, as compaction's free scanner gives; with
/// a `private` it also records the page frame number in that [`Shared`].
#[cfg(CONFIG_BALLOON_MIGRATION)]
unsafe extern "C" fn new_folio(
    _src: *mut bindings::folio,
    private: c_ulong,
) -> *mut bindings::folio {
    // SAFETY: No preconditions.
    let page = unsafe { bindings::balloon_page_alloc() };
    if !page.is_null() && private != 0 {
        // SAFETY: A non-zero `private` is the address of a live `Shared` (see `Compactor`).
        unsafe { (*(private as *const Shared)).record(pfn(page)) };
    }
    // An order-0 page is its own folio.
    page.cast()
}

/// `new_folio_t` for `migrate_pages()`: a fresh page of `ZONE_DMA`. Balloon pages are movable,
/// so they come from the highest zone: this one is in another.
#[cfg(all(CONFIG_BALLOON_MIGRATION, CONFIG_ZONE_DMA))]
extern "C" fn new_dma_folio(_src: *mut bindings::folio, _private: c_ulong) -> *mut bindings::folio {
    alloc_dma_page().cast()
}

/// A page of `ZONE_DMA`, or NULL.
#[cfg(all(CONFIG_BALLOON_MIGRATION, CONFIG_ZONE_DMA))]
fn alloc_dma_page() -> *mut bindings::page {
    // SAFETY: No preconditions; the flags are the kernel's own.
    unsafe { bindings::alloc_pages(bindings::GFP_KERNEL | (1 << bindings::___GFP_DMA_BIT), 0) }
}

/// The managed page count of `page`'s zone.
#[cfg(all(CONFIG_BALLOON_MIGRATION, CONFIG_ZONE_DMA))]
fn zone_managed(page: *mut bindings::page) -> usize {
    // SAFETY: Only called with valid pages; reads a counter.
    unsafe { bindings::movable_page_zone_managed(page) }
}

/// Migrates the isolated `page` through `migrate_pages()` and puts it back if that fails;
/// returns what `migrate_pages()` returned.
#[cfg(CONFIG_BALLOON_MIGRATION)]
fn migrate(page: *mut bindings::page, mode: bindings::migrate_mode, private: c_ulong) -> c_int {
    migrate_with(page, mode, private, new_folio)
}

/// [`migrate`], with the target pages from `new`.
#[cfg(CONFIG_BALLOON_MIGRATION)]
fn migrate_with(
    page: *mut bindings::page,
    mode: bindings::migrate_mode,
    private: c_ulong,
    new: unsafe extern "C" fn(*mut bindings::folio, c_ulong) -> *mut bindings::folio,
) -> c_int {
    with_list(|head| {
        // SAFETY: The `lru` of an isolated page belongs to the isolator.
        unsafe { bindings::movable_page_list_add(page, head) };
        // SAFETY: `head` holds isolated movable pages; `new_folio` allocates the targets.
        let ret = unsafe {
            bindings::migrate_pages(
                head,
                Some(new),
                None,
                private,
                mode,
                bindings::migrate_reason_MR_COMPACTION,
                ptr::null_mut(),
            )
        };
        if ret != 0 {
            // SAFETY: `head` holds what could not be migrated, still isolated.
            unsafe { bindings::putback_movable_pages(head) };
        }
        ret
    })
}

/// Puts the isolated `page` back without migrating it.
#[cfg(CONFIG_BALLOON_MIGRATION)]
fn putback(page: *mut bindings::page) {
    with_list(|head| {
        // SAFETY: The `lru` of an isolated page belongs to the isolator.
        unsafe { bindings::movable_page_list_add(page, head) };
        // SAFETY: `head` holds one isolated movable page.
        unsafe { bindings::putback_movable_pages(head) };
    })
}

#[kunit_tests(balloon_core)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_dequeue_counts() -> Result {
        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let mut pfns = KVec::new();
        for _ in 0..2 {
            let page = b.enqueue()?;
            // SAFETY: The page is in the balloon, which holds a reference.
            assert!(unsafe { bindings::movable_page_is_offline(page) });
            // SAFETY: As above.
            let movable = unsafe { bindings::movable_page_has_movable_ops(page) };
            assert_eq!(movable, cfg!(CONFIG_BALLOON_MIGRATION));
            pfns.push(pfn(page), GFP_KERNEL)?;
        }
        // Two more in one batch.
        let n = with_list(|head| -> Result<usize> {
            for _ in 0..2 {
                // SAFETY: No preconditions.
                let page = unsafe { bindings::balloon_page_alloc() };
                if page.is_null() {
                    while let Some(page) = pop(head) {
                        // SAFETY: Our page, never enqueued.
                        unsafe { bindings::movable_page_put(page) };
                    }
                    return Err(ENOMEM);
                }
                pfns.push(pfn(page), GFP_KERNEL)?;
                // SAFETY: A fresh page whose `lru` is unused.
                unsafe { bindings::movable_page_list_add(page, head) };
            }
            // SAFETY: An initialised balloon and a list of fresh pages.
            Ok(unsafe { bindings::balloon_page_list_enqueue(b.raw(), head) })
        })?;
        assert_eq!(n, 2);
        assert_eq!(before.delta()?, (4, 0, 0, 4, -4));

        // A batch of three, then the last one alone.
        let mut out = b.dequeue(3)?;
        assert_eq!(out.len(), 3);
        assert_eq!(before.delta()?, (4, 3, 0, 1, -1));
        // SAFETY: An initialised balloon with one page on its list.
        let page = unsafe { bindings::balloon_page_dequeue(b.raw()) };
        assert!(!page.is_null());
        out.push(pfn(page), GFP_KERNEL)?;
        // SAFETY: The balloon's reference, handed over by the dequeue.
        unsafe { bindings::movable_page_put(page) };
        assert_eq!(before.delta()?, (4, 4, 0, 0, 0));
        assert_eq!(b.isolated(), 0);
        // Asking for more than is there gives what is there: nothing.
        assert!(b.dequeue(8)?.is_empty());

        // Exactly the pages that went in came out.
        pfns.sort_unstable();
        out.sort_unstable();
        assert_eq!(&pfns[..], &out[..]);
        Ok(())
    }

    #[test]
    fn managed_pages_only_when_asked() -> Result {
        let b = TestBalloon::new(false)?;
        let before = Counters::now()?;
        b.enqueue()?;
        assert_eq!(before.delta()?, (1, 0, 0, 1, 0));
        assert_eq!(b.dequeue(1)?.len(), 1);
        assert_eq!(before.delta()?, (1, 1, 0, 0, 0));
        Ok(())
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn isolate_then_putback_restores_the_list() -> Result {
        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let a = b.enqueue()?;
        b.enqueue()?;

        assert!(isolate(a));
        assert_eq!(b.isolated(), 1);
        // Isolated once, not twice.
        assert!(!isolate(a));
        assert_eq!(b.isolated(), 1);
        putback(a);
        assert_eq!(b.isolated(), 0);
        // Nothing was counted, and both pages are on the list again.
        assert_eq!(before.delta()?, (2, 0, 0, 2, -2));
        let out = b.dequeue(2)?;
        assert_eq!(out.len(), 2);
        assert!(out.contains(&pfn(a)));
        assert_eq!(b.calls.load(Relaxed), 0);
        Ok(())
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn isolate_then_migrate_moves_ownership() -> Result {
        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let a = b.enqueue()?;
        // A reference of our own, to see the old page let go of by everyone else.
        // SAFETY: `a` is in the balloon, hence alive.
        unsafe { bindings::movable_page_get(a) };
        assert_eq!(page_count(a), 2);

        assert!(isolate(a));
        assert_eq!(migrate(a, bindings::migrate_mode::MIGRATE_SYNC, 0), 0);
        assert_eq!(b.calls.load(Relaxed), 1);
        assert_eq!(b.last_old.load(Relaxed), pfn(a));
        let new = b.last_new.load(Relaxed);
        assert!(new != pfn(a));
        assert_eq!(b.isolated(), 0);
        // The balloon and the migration core dropped the old page: only our reference is left.
        assert_eq!(page_count(a), 1);
        // SAFETY: Our reference; this frees the page.
        unsafe { bindings::movable_page_put(a) };
        // One migration; the balloon still holds one page, out of the managed count.
        assert_eq!(before.delta()?, (1, 0, 1, 1, -1));

        let out = b.dequeue(2)?;
        assert_eq!(&out[..], &[new]);
        assert_eq!(before.delta()?, (1, 1, 1, 0, 0));
        Ok(())
    }

    /// Compaction may move a balloon page to another zone: the zone it leaves gets a managed
    /// page back and the zone it enters loses one (63341ab03706 fixed virtio_balloon for this).
    #[cfg(all(CONFIG_BALLOON_MIGRATION, CONFIG_ZONE_DMA))]
    #[test]
    fn migrating_to_another_zone_moves_the_managed_page() -> Result {
        let probe = alloc_dma_page();
        if probe.is_null() {
            return Err(ENOMEM);
        }
        let dma_managed = zone_managed(probe);
        // SAFETY: Our page, from `alloc_dma_page()`.
        unsafe { bindings::__free_pages(probe, 0) };

        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let a = b.enqueue()?;
        // SAFETY: `a` is in the balloon, hence alive; the reference keeps it so after migration.
        unsafe { bindings::movable_page_get(a) };
        let a_managed = zone_managed(a);
        assert!(isolate(a));
        assert_eq!(
            migrate_with(a, bindings::migrate_mode::MIGRATE_SYNC, 0, new_dma_folio),
            0
        );
        // SAFETY: The new page is in the balloon, hence alive.
        let new = unsafe { bindings::movable_pfn_to_page(b.last_new.load(Relaxed)) };
        // SAFETY: Both pages are alive; only their zones are compared.
        let zones = unsafe {
            (
                bindings::movable_page_zone(a),
                bindings::movable_page_zone(new),
            )
        };
        assert!(zones.0 != zones.1);
        assert_eq!(zone_managed(a), a_managed + 1);
        assert_eq!(zone_managed(new), dma_managed - 1);
        // Across zones, the total stays as for any migration: one page out of it.
        assert_eq!(before.delta()?, (1, 0, 1, 1, -1));
        // SAFETY: Our reference; this frees the old page.
        unsafe { bindings::movable_page_put(a) };

        assert_eq!(b.dequeue(1)?.len(), 1);
        assert_eq!(zone_managed(new), dma_managed);
        assert_eq!(before.delta()?, (1, 1, 1, 0, 0));
        Ok(())
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn migrate_failure_leaves_everything_intact() -> Result {
        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let a = b.enqueue()?;
        // SAFETY: `a` is in the balloon, hence alive.
        unsafe { bindings::movable_page_get(a) };

        // Temporary: retried, then put back.
        b.answer.store(EAGAIN.to_errno(), Relaxed);
        assert!(isolate(a));
        assert!(migrate(a, bindings::migrate_mode::MIGRATE_ASYNC, 0) > 0);
        assert!(b.calls.load(Relaxed) >= 2);
        // Permanent: given up at the first answer (in one async pass; a sync migration would
        // make a second, synchronous pass over every failure).
        b.calls.store(0, Relaxed);
        b.answer.store(EBUSY.to_errno(), Relaxed);
        assert!(isolate(a));
        assert!(migrate(a, bindings::migrate_mode::MIGRATE_ASYNC, 0) > 0);
        assert_eq!(b.calls.load(Relaxed), 1);

        assert_eq!(b.isolated(), 0);
        assert_eq!(page_count(a), 2);
        // SAFETY: Our reference; the balloon keeps its own.
        unsafe { bindings::movable_page_put(a) };
        assert_eq!(before.delta()?, (1, 0, 0, 1, -1));
        assert_eq!(&b.dequeue(2)?[..], &[pfn(a)]);
        assert_eq!(before.delta()?, (1, 1, 0, 0, 0));
        Ok(())
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn migrate_enoent_deflates_the_old_page() -> Result {
        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let a = b.enqueue()?;
        b.answer.store(ENOENT.to_errno(), Relaxed);
        assert!(isolate(a));
        // "Old page deflated, new page not inflated": a success for the migration core.
        assert_eq!(migrate(a, bindings::migrate_mode::MIGRATE_SYNC, 0), 0);
        assert_eq!(b.isolated(), 0);
        assert!(b.dequeue(1)?.is_empty());
        let (inflate, deflate, migrated, balloon_pages, managed) = before.delta()?;
        assert_eq!((inflate, deflate, migrated, managed), (1, 1, 0, 0));
        // The one difference between the cores: mm/balloon.c leaves the deflated page in
        // NR_BALLOON_PAGES, the Rust core takes it out.
        let expected = if cfg!(CONFIG_BALLOON_CORE_RUST) { 0 } else { 1 };
        assert_eq!(balloon_pages, expected);
        Ok(())
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn isolating_a_dequeued_page_fails() -> Result {
        let b = TestBalloon::new(false)?;
        b.enqueue()?;
        with_list(|head| -> Result {
            // SAFETY: An initialised balloon and an empty list.
            let got = unsafe { bindings::balloon_page_list_dequeue(b.raw(), head, 1) };
            assert_eq!(got, 1);
            let page = pop(head).ok_or(EINVAL)?;
            // Still typed and movable (sticky until freed), but without an owner.
            // SAFETY: We hold the balloon's reference.
            assert!(unsafe { bindings::movable_page_has_movable_ops(page) });
            assert!(!isolate(page));
            assert_eq!(b.isolated(), 0);
            assert_eq!(page_count(page), 1);
            // SAFETY: The balloon's reference, handed over by the dequeue.
            unsafe { bindings::movable_page_put(page) };
            Ok(())
        })
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn dequeue_with_isolated_pages_returns_fewer() -> Result {
        let b = TestBalloon::new(true)?;
        let before = Counters::now()?;
        let pages = [b.enqueue()?, b.enqueue()?, b.enqueue()?];
        assert!(isolate(pages[0]));
        assert!(isolate(pages[1]));
        assert_eq!(b.isolated(), 2);

        assert_eq!(&b.dequeue(3)?[..], &[pfn(pages[2])]);
        // The list is empty but pages are isolated: no page, and no "lost pages" BUG.
        // SAFETY: An initialised balloon.
        let page = unsafe { bindings::balloon_page_dequeue(b.raw()) };
        assert!(page.is_null());
        assert_eq!(before.delta()?, (3, 1, 0, 2, -2));

        putback(pages[0]);
        putback(pages[1]);
        assert_eq!(b.dequeue(3)?.len(), 2);
        assert_eq!(b.isolated(), 0);
        assert_eq!(before.delta()?, (3, 3, 0, 0, 0));
        Ok(())
    }

    #[cfg(CONFIG_BALLOON_MIGRATION)]
    #[test]
    fn concurrent_inflate_deflate_compact() -> Result {
        let b = TestBalloon::new(true)?;
        // Every third migration is refused for now.
        b.eagain_every.store(3, Relaxed);
        let before = Counters::now()?;
        let shared = Arc::new(Shared::new(b.raw() as usize)?, GFP_KERNEL)?;
        for kind in [Kind::Inflate, Kind::Deflate, Kind::Compact] {
            let mine = shared.clone();
            let worker = Arc::pin_init(
                pin_init!(Worker {
                    kind,
                    shared: mine,
                    work <- new_work!("balloon_core_kunit::Worker::work"),
                }),
                GFP_KERNEL,
            )?;
            if workqueue::system_unbound().enqueue(worker).is_err() {
                return Err(EBUSY);
            }
        }
        let start = Instant::<Monotonic>::now();
        while shared.done.load(Relaxed) < 3 {
            fsleep(Delta::from_millis(20));
            if start.elapsed() > Delta::from_secs(RUN_SECS) {
                shared.stop.store(1, Relaxed);
            }
        }

        // Every worker finished its isolation, so nothing is isolated any more: drain.
        assert_eq!(b.isolated(), 0);
        let inflated = shared.inflated.load(Relaxed);
        let mut deflated = shared.deflated.load(Relaxed);
        deflated += b.dequeue(usize::MAX)?.len();
        let (isolated, migrated) = (shared.isolated.load(Relaxed), b.migrated.load(Relaxed));
        pr_info!(
            "balloon_core: {inflated} inflated, {deflated} deflated, {isolated} isolated, \
             {migrated} migrated, {} refused\n",
            b.calls.load(Relaxed) - migrated
        );
        // All three did something.
        assert!(inflated > 0 && isolated > 0 && shared.deflated.load(Relaxed) > 0);
        // Every page that went in came out, and the counters agree.
        assert_eq!(inflated, deflated);
        assert_eq!(
            before.delta()?,
            (inflated as u64, deflated as u64, migrated as u64, 0, 0)
        );
        Ok(())
    }
}

/// How long the concurrent test runs.
const RUN_SECS: i64 = 3;
/// The page frame numbers the compactor picks from.
const PFNS: usize = 1024;
/// The most pages the inflater keeps in the balloon.
const MAX_PAGES: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Inflate,
    Deflate,
    Compact,
}

/// What the workers of the concurrent test share.
struct Shared {
    /// The `balloon_dev_info` of the test's `TestBalloon`, which outlives the workers.
    balloon: usize,
    stop: Atomic<i32>,
    done: Atomic<usize>,
    inflated: Atomic<usize>,
    deflated: Atomic<usize>,
    isolated: Atomic<usize>,
    /// Page frame numbers of pages that were in the balloon at some point.
    pfns: KVec<Atomic<usize>>,
    next: Atomic<usize>,
}

impl Shared {
    fn new(balloon: usize) -> Result<Self> {
        let mut pfns = KVec::with_capacity(PFNS, GFP_KERNEL)?;
        for _ in 0..PFNS {
            pfns.push(Atomic::new(0), GFP_KERNEL)?;
        }
        Ok(Self {
            balloon,
            stop: Atomic::new(0),
            done: Atomic::new(0),
            inflated: Atomic::new(0),
            deflated: Atomic::new(0),
            isolated: Atomic::new(0),
            pfns,
            next: Atomic::new(0),
        })
    }

    fn record(&self, pfn: usize) {
        let i = self.next.fetch_add(1, Relaxed) % PFNS;
        self.pfns[i].store(pfn, Relaxed);
    }

    fn balloon(&self) -> *mut bindings::balloon_dev_info {
        self.balloon as *mut bindings::balloon_dev_info
    }
}

#[pin_data]
struct Worker {
    kind: Kind,
    shared: Arc<Shared>,
    #[pin]
    work: Work<Worker>,
}

impl_has_work! {
    impl HasWork<Self> for Worker { self.work }
}

impl WorkItem for Worker {
    type Pointer = Arc<Worker>;

    fn run(this: Arc<Worker>) {
        let s = &this.shared;
        let mut rng: u32 = 0x9e37_79b9 ^ (this.kind as u32);
        let mut round = 0u32;
        while s.stop.load(Relaxed) == 0 {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            match this.kind {
                Kind::Inflate => inflate_one(s),
                Kind::Deflate => deflate_some(s, 1 + (rng % 8) as usize),
                #[cfg(CONFIG_BALLOON_MIGRATION)]
                Kind::Compact => compact_one(s, rng),
                #[cfg(not(CONFIG_BALLOON_MIGRATION))]
                Kind::Compact => {}
            }
            round += 1;
            // Let the others (and the test) run on small machines.
            if round % 16 == 0 {
                fsleep(Delta::from_micros(100));
            }
        }
        s.done.add(1, Relaxed);
    }
}

fn inflate_one(s: &Shared) {
    if s.inflated.load(Relaxed) - s.deflated.load(Relaxed) >= MAX_PAGES {
        return;
    }
    // SAFETY: No preconditions.
    let page = unsafe { bindings::balloon_page_alloc() };
    if page.is_null() {
        return;
    }
    s.record(pfn(page));
    // Counted before it is in, so the deflater never sees more out than in.
    s.inflated.add(1, Relaxed);
    // SAFETY: A fresh page into the live test balloon.
    unsafe { bindings::balloon_page_enqueue(s.balloon(), page) };
}

fn deflate_some(s: &Shared, n: usize) {
    with_list(|head| {
        // SAFETY: The live test balloon and an empty list.
        let got = unsafe { bindings::balloon_page_list_dequeue(s.balloon(), head, n) };
        while let Some(page) = pop(head) {
            // SAFETY: The balloon's reference, handed over by the dequeue.
            unsafe { bindings::movable_page_put(page) };
        }
        s.deflated.add(got, Relaxed);
    })
}

/// Picks a page frame that was in the balloon and treats it as compaction would.
#[cfg(CONFIG_BALLOON_MIGRATION)]
fn compact_one(s: &Shared, rng: u32) {
    let pfn = s.pfns[rng as usize % PFNS].load(Relaxed);
    if pfn == 0 {
        return;
    }
    // SAFETY: The frame held a page, so it has a memory map entry.
    let page = unsafe { bindings::movable_pfn_to_page(pfn) };
    // The lockless check of the compaction scanner; the page may be anything by now.
    // SAFETY: Reading the flags of any page is allowed.
    if !unsafe { bindings::movable_page_has_movable_ops(page) } || !isolate(page) {
        return;
    }
    s.isolated.add(1, Relaxed);
    match rng % 4 {
        0 => putback(page),
        1 => {
            migrate(
                page,
                bindings::migrate_mode::MIGRATE_ASYNC,
                s as *const Shared as c_ulong,
            );
        }
        _ => {
            migrate(
                page,
                bindings::migrate_mode::MIGRATE_SYNC,
                s as *const Shared as c_ulong,
            );
        }
    }
}
