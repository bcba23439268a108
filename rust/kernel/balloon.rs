// SPDX-License-Identifier: GPL-2.0

//! Memory balloon pages: the kernel's balloon page list and its accounting.
//!
//! A memory balloon takes pages away from the guest and hands their frames to a hypervisor. The C
//! balloon core keeps the inflated pages on a per-device list, does the accounting (`BALLOON_*` vm
//! events, `NR_BALLOON_PAGES`, optionally the managed page count) and, with
//! `CONFIG_BALLOON_MIGRATION`, lets compaction migrate inflated pages through the device's
//! migration callback.
//!
//! C header: [`include/linux/balloon.h`](srctree/include/linux/balloon.h)
//!
//! # API summary
//!
//! - [`BalloonDevInfo<T>`]: pinned owner of a `struct balloon_dev_info` and of the driver data `T`
//!   (reachable through `Deref`). `T` implements [`BalloonMigrate`], the migration callback.
//!   - [`BalloonDevInfo::new`]`(binding, adjust_managed_page_count, data)` ->
//!     `impl PinInit<Self, Error>`, for `T:` the [`Binding`]'s span: at its end every callback is
//!     torn down and leftover pages freed, even if the `BalloonDevInfo` was leaked;
//!     [`BalloonDevInfo::set_adjust_managed_page_count`] while the balloon is empty.
//!   - [`BalloonDevInfo::alloc_page`] -> `Option<`[`BalloonPage`]`>` (`balloon_page_alloc()`).
//!   - [`BalloonDevInfo::enqueue`]`(page) -> Result<pfn>` and
//!     [`BalloonDevInfo::enqueue_many`]`(pages)` (`balloon_page_list_enqueue()`): the page is in
//!     the balloon (`ENODEV`/none taken once the binding has ended).
//!   - [`BalloonDevInfo::dequeue`] -> `Option<`[`DeflatedPage`]`>` and
//!     [`BalloonDevInfo::dequeue_many`]`(n, f)`; `None`/fewer pages when the list is empty or
//!     its pages are isolated for migration (never the C `BUG()`).
//!   - [`BalloonDevInfo::pages`] (guest pages in the balloon, isolated ones included),
//!     [`BalloonDevInfo::isolated_pages`] (racy snapshot).
//! - [`BalloonPage`]: allocated, not in the balloon yet; dropping it frees it. `pfn()`.
//! - [`BalloonBlock`]: `alloc_if_free(order)` takes a whole free block of `2^order` pages (no
//!   reclaim) split into order-0 pages, handed out in frame order as [`BalloonPage`]s by its
//!   `Iterator`; the pages not taken are freed on drop. [`BalloonBlock::HUGE_ORDER`]: 2 MiB.
//! - [`DeflatedPage`]: taken out of the balloon. Tell the host first, then
//!   [`DeflatedPage::release`] it to the page allocator (dropping releases it too). `pfn()`.
//! - [`BalloonMigrate`]`::migrate(&self, newpage, page, mode) -> Result` with [`MigratingPage`]
//!   (`pfn()`) and [`MigrateMode`] (`Async`, `SyncLight`, `Sync`).
//! - OOM: with `T:` [`BalloonOom`] (`fn oom_deflate(&BalloonDevInfo<T>) -> usize`),
//!   [`BalloonDevInfo::register_oom_notifier`]`(priority)` /
//!   [`BalloonDevInfo::unregister_oom_notifier`] (also done on drop).
//! - Free page reporting: with `T:` [`BalloonReport`]
//!   (`fn report(&BalloonDevInfo<T>, &ReportedPages<'_>) -> Result`),
//!   [`BalloonDevInfo::register_page_reporting`]`(order, capacity)` /
//!   [`BalloonDevInfo::unregister_page_reporting`] (also done on drop). [`ReportedPages`]:
//!   `len()`, `get(i) -> (pfn, bytes)`, `as_raw()` (the scatterlist, for the virtqueue).
//! - [`want_init_on_free`], [`page_poisoning_enabled`], [`PAGE_POISON`]: what free pages contain,
//!   for `VIRTIO_BALLOON_F_PAGE_POISON`.
//! - [`stats::MemStats::gather`]: the values the virtio balloon reports on its stats queue.
//!
//! # Examples
//!
//! Inflating and deflating one page; telling the host is the driver's business and is only
//! sketched by a comment here.
//!
//! ```
//! use kernel::balloon::{BalloonDevInfo, BalloonMigrate, MigrateMode, MigratingPage};
//! use kernel::prelude::*;
//!
//! struct Host;
//!
//! impl BalloonMigrate for Host {
//!     fn migrate(
//!         &self,
//!         _newpage: &MigratingPage<'_>,
//!         _page: &MigratingPage<'_>,
//!         _mode: MigrateMode,
//!     ) -> Result {
//!         // A real driver tells the host that `newpage` is inflated and `page` deflated.
//!         Ok(())
//!     }
//! }
//!
//! // A driver gets its binding from the bus (`virtio::Driver::probe`); a scope stands in here.
//! kernel::binding::scope(|binding| -> Result {
//!     let balloon = KBox::pin_init(BalloonDevInfo::new(binding, false, Host), GFP_KERNEL)?;
//!     if let Some(page) = balloon.alloc_page() {
//!         let pfn = balloon.enqueue(page)?;
//!         // ... tell the host about `pfn` ...
//!         assert_eq!(balloon.pages(), 1);
//!         if let Some(page) = balloon.dequeue() {
//!             // ... tell the host about `page.pfn()` ...
//!             page.release();
//!         }
//!     }
//!     Ok(())
//! })?;
//! # Ok::<(), Error>(())
//! ```

use crate::{
    binding::{Binding, Enrolment},
    bindings,
    error::{code::*, to_result, Result},
    ffi::{c_int, c_uint, c_ulong, c_void},
    prelude::*,
    sync::atomic::{Atomic, Full, Relaxed},
    time::{delay::fsleep, Delta},
    types::Opaque,
};
use core::{marker::PhantomData, mem::ManuallyDrop, ops::Deref, pin::Pin, ptr::NonNull};

pub mod stats;

/// The byte the page allocator fills free pages with when page poisoning is on (`PAGE_POISON`).
pub const PAGE_POISON: u8 = bindings::PAGE_POISON as u8;

/// Whether freed pages are zeroed (`init_on_free`), so a free page reads as zeroes.
pub fn want_init_on_free() -> bool {
    // SAFETY: No preconditions; it only tests a static key.
    unsafe { bindings::balloon_want_init_on_free() }
}

/// Whether freed pages are filled with [`PAGE_POISON`] (`page_poison=1`).
///
/// Meaningful once memory debugging is set up, i.e. for any driver or module.
pub fn page_poisoning_enabled() -> bool {
    // SAFETY: No preconditions; it only tests a static key.
    unsafe { bindings::balloon_page_poisoning_enabled_static() }
}

/// Returns the page frame number of `page`.
///
/// # Safety
///
/// `page` must point to a valid `struct page`.
unsafe fn page_pfn(page: NonNull<bindings::page>) -> usize {
    // SAFETY: `page` is valid per the safety requirements; `page_to_pfn()` only computes the
    // page's index in the memory map.
    unsafe { bindings::balloon_page_to_pfn(page.as_ptr()) }
}

/// A page allocated for the balloon but not in it yet.
///
/// Made by [`BalloonDevInfo::alloc_page`], consumed by [`BalloonDevInfo::enqueue`]. Dropping it
/// frees the page, which is what an inflation that gives up (say the host cannot be told) wants.
///
/// # Invariants
///
/// `self.0` points to an order-0 page returned by `balloon_page_alloc()` or split from a
/// [`BalloonBlock`] (directly, or back from a balloon through [`DeflatedPage::keep`]) that this
/// object holds the owner reference to (a compaction scanner may hold a transient one of its
/// own), that is in no balloon and whose `lru` field is unused.
pub struct BalloonPage(NonNull<bindings::page>);

// SAFETY: A page reference is not tied to the thread that allocated it; it can be enqueued or
// freed from any thread.
unsafe impl Send for BalloonPage {}

// SAFETY: The only operation through `&BalloonPage` is reading its frame number, which is
// immutable.
unsafe impl Sync for BalloonPage {}

impl BalloonPage {
    /// Allocates a page for the balloon, or returns `None` if memory is short.
    ///
    /// Uses the C core's `balloon_page_alloc()`: movable memory when balloon pages can migrate,
    /// and no retrying, no warning and no emergency reserves when it fails, since a balloon just
    /// tries again later. May sleep.
    pub fn alloc() -> Option<Self> {
        // SAFETY: `balloon_page_alloc()` has no preconditions.
        let page = unsafe { bindings::balloon_page_alloc() };
        // INVARIANT: a non-NULL result is a fresh order-0 page owned by the caller.
        NonNull::new(page).map(Self)
    }

    /// Allocates up to `max` pages for the balloon, handing each to `take`; returns how many.
    ///
    /// The same flags and the same pages as [`BalloonPage::alloc`] called `max` times (the
    /// per-cpu list, refilled from the smallest free blocks first, so the guest's free 2 MiB
    /// blocks stay whole), taken from the page allocator a batch at a time. Fewer than `max`
    /// only when memory is short. May sleep.
    pub fn alloc_bulk(max: usize, mut take: impl FnMut(BalloonPage)) -> usize {
        const BATCH: usize = 64;
        let mut done = 0;
        while done < max {
            let mut batch = [core::ptr::null_mut::<bindings::page>(); BATCH];
            let want = (max - done).min(BATCH);
            // SAFETY: `batch` has room for `want` page pointers, all NULL on entry, which is what
            // the helper (`alloc_pages_bulk()`) requires; it writes only within those `want`.
            let got =
                unsafe { bindings::balloon_pages_alloc_bulk(want as c_uint, batch.as_mut_ptr()) };
            // The helper fills the slots from the start; never trust it for more than asked.
            let got = (got as usize).min(want);
            for &page in &batch[..got] {
                // INVARIANT: each of the first `got` slots holds a fresh order-0 page allocated
                // with the balloon's flags, owned by the caller.
                if let Some(page) = NonNull::new(page) {
                    take(Self(page));
                }
            }
            if got == 0 {
                break;
            }
            done += got;
        }
        done
    }

    /// The page frame number of the page.
    pub fn pfn(&self) -> usize {
        // SAFETY: By the type invariant, `self.0` is a valid page.
        unsafe { page_pfn(self.0) }
    }

    fn into_raw(self) -> NonNull<bindings::page> {
        ManuallyDrop::new(self).0
    }
}

impl Drop for BalloonPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, this object holds the only owner reference to the page,
        // and it is not in any balloon.
        unsafe { bindings::balloon_put_page(self.0.as_ptr()) };
    }
}

/// A whole block of `2^order` contiguous pages taken for the balloon, split into order-0 pages.
///
/// A balloon that takes a 2 MiB block when one is free, rather than 512 scattered pages, lets a
/// host backed by huge pages free a whole host page, and leaves the guest's other 2 MiB blocks
/// intact. The block is split at once (`split_page()`): every page is an ordinary balloon page,
/// enqueued, migrated and deflated on its own. The iterator hands the pages out in frame order,
/// so that the host gets a block's frames one after the other.
///
/// # Invariants
///
/// `head` points to the first page of a block of `2^order` pages allocated with the balloon's
/// flags and split into order-0 pages; the object holds the owner reference to each page from
/// index `next` on (the pages before it were handed out), and none of those is in a balloon or
/// uses its `lru`.
pub struct BalloonBlock {
    head: NonNull<bindings::page>,
    order: u32,
    next: usize,
}

// SAFETY: Page references are not tied to the thread that allocated them.
unsafe impl Send for BalloonBlock {}

impl BalloonBlock {
    /// The order of a 2 MiB block (9 with 4 KiB pages), the size of an x86_64 huge page.
    pub const HUGE_ORDER: u32 = 21 - bindings::PAGE_SHIFT;

    /// Takes a free block of `2^order` pages for the balloon if the page allocator has one at
    /// hand: the flags of [`BalloonPage::alloc`] without any reclaim or compaction, since a
    /// balloon that finds no free block takes single pages instead. `None` also once free memory
    /// is within two blocks of the watermarks (the last of it is for [`BalloonPage::alloc`],
    /// which reclaims), and for an order beyond `MAX_PAGE_ORDER`.
    pub fn alloc_if_free(order: u32) -> Option<Self> {
        if order > bindings::MAX_PAGE_ORDER {
            return None;
        }
        // SAFETY: `order` is within the page allocator's range; the helper has no other
        // requirement.
        let head = unsafe { bindings::balloon_block_alloc(order) };
        // INVARIANT: A non-NULL result is such a block, split, and owned by the caller.
        NonNull::new(head).map(|head| Self {
            head,
            order,
            next: 0,
        })
    }

    /// Takes a free block of `2^order` pages as [`BalloonBlock::alloc_if_free`] does, but only
    /// where single-page allocations would split one anyway: once the page allocator's free
    /// pages in smaller blocks and on its per-cpu lists are fewer than [`Self::SMALLER_SHARE`]
    /// of its free memory, or than two blocks. Until then, `None`: a balloon that takes the
    /// smaller free pages first, as single pages do, leaves the guest's free blocks whole for
    /// huge pages and compaction.
    pub fn alloc_if_smallest(order: u32) -> Option<Self> {
        if order > bindings::MAX_PAGE_ORDER {
            return None;
        }
        let (smaller, most) = Self::smaller_free(order);
        if smaller >= most {
            return None;
        }
        Self::alloc_if_free(order)
    }

    /// The free pages in blocks smaller than `2^order` and on the per-cpu lists, and how many
    /// of them [`Self::alloc_if_smallest`] lets stay free while it takes a block: a split leaves
    /// up to a block's worth in the smaller orders, which single pages then take first; the
    /// rest is noise next to the guest's free memory.
    fn smaller_free(order: u32) -> (c_ulong, c_ulong) {
        let mut free: c_ulong = 0;
        // SAFETY: The helper only reads the zones' counters and writes `free`, a valid local.
        let smaller = unsafe { bindings::balloon_free_below(order, &mut free) };
        (smaller, (2 << order).max(free / Self::SMALLER_SHARE))
    }

    /// The share (one in this many) of free memory that pages smaller than a block may still
    /// make up when [`Self::alloc_if_smallest`] takes a block: the guest's fragmentation score
    /// (the share of free memory outside pageblock-sized blocks, which wakes kcompactd at 90%)
    /// stays within a point and a half of where single pages would leave it.
    pub const SMALLER_SHARE: c_ulong = 64;

    /// How many pages the block had.
    pub fn pages(&self) -> usize {
        1 << self.order
    }

    fn page(&self, index: usize) -> NonNull<bindings::page> {
        // SAFETY: `index` is within the block (callers check against `pages()`), and the page
        // descriptors of a buddy block are contiguous in the memory map.
        unsafe { self.head.add(index) }
    }
}

impl Iterator for BalloonBlock {
    type Item = BalloonPage;

    fn next(&mut self) -> Option<BalloonPage> {
        if self.next == self.pages() {
            return None;
        }
        let page = self.page(self.next);
        self.next += 1;
        // INVARIANT: An order-0 page of the split block whose owner reference moves from the
        // block to the `BalloonPage`; it is in no balloon and its `lru` is unused.
        Some(BalloonPage(page))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.pages() - self.next;
        (left, Some(left))
    }
}

impl Drop for BalloonBlock {
    fn drop(&mut self) {
        for i in self.next..self.pages() {
            // SAFETY: By the type invariant, the block holds the owner reference to every page
            // from `next` on, and none is in a balloon.
            unsafe { bindings::balloon_put_page(self.page(i).as_ptr()) };
        }
    }
}

/// A page taken out of the balloon, not yet given back to the page allocator.
///
/// The host still considers the page its own until the driver tells it about the deflation; with
/// `VIRTIO_BALLOON_F_MUST_TELL_HOST` the guest must not use it before. So the driver first sends
/// [`DeflatedPage::pfn`] to the host, then calls [`DeflatedPage::release`], as the C virtio
/// balloon does with `tell_host()` then `release_pages_balloon()`.
///
/// Dropping a deflated page releases it too, so that error paths do not leak memory.
///
/// # Invariants
///
/// `self.0` points to an order-0 page that was removed from a balloon by
/// `balloon_page_list_dequeue()` (so it is no longer in any balloon list, cannot be isolated for
/// migration, and its `lru` field is unused), and this object holds the balloon's reference to it.
#[must_use = "a deflated page must be released once the host knows about it"]
pub struct DeflatedPage(NonNull<bindings::page>);

// SAFETY: A page reference is not tied to a thread; the page can be released from any thread.
unsafe impl Send for DeflatedPage {}

// SAFETY: The only operation through `&DeflatedPage` is reading its frame number, which is
// immutable.
unsafe impl Sync for DeflatedPage {}

impl DeflatedPage {
    /// The page frame number of the page.
    pub fn pfn(&self) -> usize {
        // SAFETY: By the type invariant, `self.0` is a valid page.
        unsafe { page_pfn(self.0) }
    }

    /// Gives the page back to the page allocator.
    ///
    /// Call this once the host knows the page left the balloon.
    pub fn release(self) {
        drop(self);
    }

    /// Keeps the page for the balloon instead: for a deflation the host could not be told about,
    /// whose pages the guest must not use (`VIRTIO_BALLOON_F_MUST_TELL_HOST`). Enqueue the result
    /// again, as `vmw_balloon` does with pages its host refused.
    pub fn keep(self) -> BalloonPage {
        // INVARIANT: out of any balloon list with its `lru` unused, and the balloon's reference,
        // which moves to the `BalloonPage`, is the owner reference `balloon_page_alloc()` gave.
        BalloonPage(ManuallyDrop::new(self).0)
    }
}

impl Drop for DeflatedPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariant, this object holds the balloon's reference to the page,
        // which is out of the balloon; dropping that reference is what `release_pages_balloon()`
        // does. A compaction scanner may hold a transient reference of its own, in which case
        // the page is freed when that one is dropped.
        unsafe { bindings::balloon_put_page(self.0.as_ptr()) };
    }
}

/// A page taking part in a balloon page migration, lent to [`BalloonMigrate::migrate`].
///
/// # Invariants
///
/// `self.0` points to a page that is locked and kept alive by the migration core for `'a`.
pub struct MigratingPage<'a>(NonNull<bindings::page>, PhantomData<&'a bindings::page>);

impl MigratingPage<'_> {
    /// # Safety
    ///
    /// `page` must point to a valid page that stays valid for the lifetime of the result.
    unsafe fn from_raw(page: *mut bindings::page) -> Option<Self> {
        // INVARIANT: valid for the lifetime per the safety requirements.
        NonNull::new(page).map(|p| Self(p, PhantomData))
    }

    /// The page frame number of the page.
    pub fn pfn(&self) -> usize {
        // SAFETY: By the type invariant, `self.0` is a valid page.
        unsafe { page_pfn(self.0) }
    }
}

/// How hard a migration may try; shared with every owner of movable pages.
pub use crate::mm::movable::MigrateMode;

/// The migration callback of a balloon: compaction moves an inflated page.
///
/// Called (with `CONFIG_BALLOON_MIGRATION`) when compaction wants the frame of `page`, an inflated
/// page it isolated, and offers `newpage` instead. The implementation tells the host that
/// `newpage` is now inflated and `page` deflated (in this order, as the C virtio balloon does),
/// then returns `Ok(())`; the core then puts `newpage` in the balloon in place of `page` and frees
/// `page`.
///
/// On error the migration is abandoned and `page` stays in the balloon; `EAGAIN` asks compaction
/// to retry later, which is the right answer when the driver is busy (the C driver answers it when
/// it cannot take its lock without waiting). The C core also knows an "old page deflated, new page
/// not inflated" outcome (`-ENOENT`); it is not offered here because the balloon would shrink
/// behind its owner's back, and an `ENOENT` from this callback is reported as `EAGAIN`.
///
/// Runs in the compaction context: concurrently with the driver's own inflation and deflation, and
/// possibly from several CPUs at once. The driver must tell the host about a page it enqueued
/// before this callback can report that page migrated; holding one lock over "enqueue, tell host"
/// and in this callback does it.
pub trait BalloonMigrate: Send + Sync {
    /// Migrates the inflated `page` to `newpage`, see the trait documentation.
    fn migrate(
        &self,
        newpage: &MigratingPage<'_>,
        page: &MigratingPage<'_>,
        mode: MigrateMode,
    ) -> Result;
}

/// Deflating on OOM: the balloon gives memory back when the system runs out of it.
///
/// Registered with [`BalloonDevInfo::register_oom_notifier`]; called from the OOM path of the
/// allocating task before the OOM killer picks a victim (the C virtio balloon does it with
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`). It may sleep, but should not allocate memory.
pub trait BalloonOom: BalloonMigrate + Sized {
    /// Deflates some of `balloon` and returns the number of guest pages given back.
    fn oom_deflate(balloon: &BalloonDevInfo<Self>) -> usize;
}

/// Free page blocks the page allocator lends to a driver to report to the host.
///
/// # Invariants
///
/// For `'a`, `sg` points to an array of `nents` initialised scatterlist entries, each describing
/// a block of free pages that page reporting took out of the free lists and gives back once the
/// report callback returns; the last entry is marked as the end of the list.
pub struct ReportedPages<'a> {
    sg: NonNull<bindings::scatterlist>,
    nents: u32,
    _p: PhantomData<&'a bindings::scatterlist>,
}

impl ReportedPages<'_> {
    /// Number of free page blocks (scatterlist entries).
    pub fn len(&self) -> usize {
        self.nents as usize
    }

    /// Whether there is no block to report (page reporting never asks for that).
    pub fn is_empty(&self) -> bool {
        self.nents == 0
    }

    /// The page frame number and length in bytes of block `index`.
    pub fn get(&self, index: usize) -> Option<(usize, usize)> {
        if index >= self.len() {
            return None;
        }
        // SAFETY: `index < nents`, so the entry is in the array (type invariant).
        let sg = unsafe { self.sg.as_ptr().add(index) };
        // SAFETY: `sg` is an initialised entry describing a page (type invariant).
        let page = unsafe { bindings::balloon_sg_page(sg) };
        let page = NonNull::new(page)?;
        // SAFETY: As above; the length is plain data.
        let len = unsafe { (*sg).length } as usize;
        // SAFETY: `page` is a valid page (type invariant).
        Some((unsafe { page_pfn(page) }, len))
    }

    /// The scatterlist, with [`ReportedPages::len`] entries, as virtqueues take it.
    ///
    /// The memory it describes may be handed to the device (the host may discard its contents:
    /// the pages are free), but only until the report callback returns: the callback waits for
    /// the device to be done with it.
    pub fn as_raw(&self) -> *mut bindings::scatterlist {
        self.sg.as_ptr()
    }
}

/// Free page reporting: the balloon tells the host which free pages it can reclaim.
///
/// Registered with [`BalloonDevInfo::register_page_reporting`]; called from a workqueue with
/// batches of free page blocks (the C virtio balloon does it with `VIRTIO_BALLOON_F_REPORTING`).
pub trait BalloonReport: BalloonMigrate + Sized {
    /// Reports `pages` to the host and returns once the host is done with them.
    ///
    /// On error the pages are not marked reported and will be offered again later.
    fn report(balloon: &BalloonDevInfo<Self>, pages: &ReportedPages<'_>) -> Result;
}

/// The C core's `struct balloon_dev_info` of a [`BalloonDevInfo`].
///
/// # Invariants
///
/// Once initialised, `dev_info` is a `balloon_dev_info` set up by `balloon_devinfo_init()`, and if
/// its `migratepage` is set, it is `migrate_callback::<T>` of the `BalloonDevInfo<T>` it is in.
/// The callback is called by C directly: `enum migrate_mode` is bound with its kCFI encoding
/// (`rust/bindgen_parameters`), so the Rust function has the type id C's indirect call checks.
#[repr(C)]
struct RawDevInfo {
    dev_info: Opaque<bindings::balloon_dev_info>,
}

/// A balloon device: the C core's `struct balloon_dev_info` and the driver data `T` its migration
/// callback runs on.
///
/// The data is reachable through [`Deref`], so a driver typically keeps everything its migration
/// callback needs (virtqueues, the lock that serialises requests to the host) in `T`, and keeps
/// a `BalloonDevInfo<T>` in its device structure.
///
/// Dropping the device waits for pages isolated for migration to come back, then frees every page
/// still in the balloon without telling anyone: a driver deflates (and tells the host about) all
/// its pages before, as the C driver's `remove_common()` does. Dropping may sleep.
///
/// The same happens when the [`Binding`] it was made with ends, if it was not dropped before
/// (leaked with `core::mem::forget`, say): its callbacks run on `T`, which may borrow what ends
/// with the binding. From then on it refuses pages and registrations (`ENODEV`).
///
/// # Invariants
///
/// - `raw.dev_info` is initialised by `balloon_devinfo_init()`; with `CONFIG_BALLOON_MIGRATION`
///   its `migratepage` is `migrate_callback::<T>`.
/// - `pages` is the number of pages enqueued through this object and not dequeued through it
///   since: each one is on `raw.dev_info.pages` or isolated for migration (a migrated page is
///   replaced by its new page, which counts for it). While it is zero, no page refers to
///   `raw.dev_info`, and the C core is not using it.
/// - `oom_nb` is registered as an OOM notifier calling `oom_callback::<T>` exactly when
///   `oom_state` is `ON`, or while it is `BUSY` during (un)registration; the same for
///   `pr_dev_info`, the page reporting device calling `report_callback::<T>`, and `pr_state`.
/// - Once initialised, `enrolment` is enrolled with the binding given to `new`, its teardown is
///   `revoke_callback::<T>`, and it has left (or been torn down) before anything is dropped.
/// - Once `ended` is set (by the teardown or the drop) and `enqueuers` is back to zero, no
///   callback is registered and no page is in the balloon, nor will ever be again.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub struct BalloonDevInfo<T: BalloonMigrate> {
    // First, so that the address of the C structure is that of `Self` (see `migrate_callback`).
    #[pin]
    raw: RawDevInfo,
    pages: Atomic<usize>,
    #[pin]
    oom_nb: Opaque<bindings::notifier_block>,
    oom_state: Atomic<i32>,
    #[pin]
    pr_dev_info: Opaque<bindings::page_reporting_dev_info>,
    pr_state: Atomic<i32>,
    ended: Atomic<bool>,
    enqueuers: Atomic<usize>,
    #[pin]
    enrolment: Enrolment,
    #[pin]
    data: T,
}

/// `oom_state`/`pr_state`: the notifier or reporting device is not registered.
const OFF: i32 = 0;
/// `oom_state`/`pr_state`: being registered or unregistered.
const BUSY: i32 = 1;
/// `oom_state`/`pr_state`: registered, with the callback for `T`.
const ON: i32 = 2;

/// Moves `state` from `from` to [`BUSY`], or returns `false` if it was not `from`.
fn claim(state: &Atomic<i32>, from: i32) -> bool {
    state.cmpxchg(from, BUSY, crate::sync::atomic::Full).is_ok()
}

// SAFETY: The C balloon core serialises every change of the `balloon_dev_info` with its own lock,
// whatever thread calls it; the page count is atomic and `T` is `Send`.
unsafe impl<T: BalloonMigrate> Send for BalloonDevInfo<T> {}

// SAFETY: Everything reachable from `&BalloonDevInfo` is synchronised: the C core's lock guards
// the `balloon_dev_info`, the page count is atomic and `T` is `Sync`.
unsafe impl<T: BalloonMigrate> Sync for BalloonDevInfo<T> {}

/// The migration callback of every `BalloonDevInfo<T>`: its `migratepage`, called by the balloon
/// core.
///
/// # Safety
///
/// `b_dev_info` must be the `raw.dev_info` of a live `BalloonDevInfo<T>`, `page` an inflated page
/// of it isolated for migration, and `newpage` a page to migrate it to; both pages locked and
/// kept alive by the migration core for the duration of the call.
unsafe extern "C" fn migrate_callback<T: BalloonMigrate>(
    b_dev_info: *mut bindings::balloon_dev_info,
    newpage: *mut bindings::page,
    page: *mut bindings::page,
    mode: bindings::migrate_mode,
) -> c_int {
    // SAFETY: `BalloonDevInfo<T>` is `repr(C)` with `raw` first, `RawDevInfo` is `repr(C)` with
    // `dev_info` first and `Opaque` is transparent, so the C structure is at the address of the
    // `BalloonDevInfo<T>`, which is alive per the safety requirements.
    let this = unsafe { &*b_dev_info.cast::<BalloonDevInfo<T>>() };
    // SAFETY: `newpage` is valid for the duration of the call per the safety requirements, which
    // the borrow does not outlive.
    let newpage = unsafe { MigratingPage::from_raw(newpage) };
    // SAFETY: As above, for `page`.
    let page = unsafe { MigratingPage::from_raw(page) };
    let (Some(newpage), Some(page)) = (newpage, page) else {
        return EINVAL.to_errno();
    };
    let mode = match MigrateMode::from_raw(mode) {
        Ok(mode) => mode,
        Err(e) => return e.to_errno(),
    };
    match this.data.migrate(&newpage, &page, mode) {
        Ok(()) => 0,
        // See `BalloonMigrate`: the page stays in the balloon instead of leaving it unnoticed.
        Err(e) if e == ENOENT => EAGAIN.to_errno(),
        Err(e) => e.to_errno(),
    }
}

/// The OOM notifier of every `BalloonDevInfo<T: BalloonOom>`.
///
/// # Safety
///
/// `nb` must be the `oom_nb` of a live `BalloonDevInfo<T>`, and `freed` a valid `unsigned long`
/// counter of freed pages, as `out_of_memory()` passes to its notifiers.
unsafe extern "C" fn oom_callback<T: BalloonOom>(
    nb: *mut bindings::notifier_block,
    _action: c_ulong,
    freed: *mut c_void,
) -> c_int {
    let nb = Opaque::cast_from(nb).cast_mut();
    // SAFETY: `nb` is the `oom_nb` field of a `BalloonDevInfo<T>` per the safety requirements, so
    // the container is in the same allocation.
    let this = unsafe { &*crate::container_of!(nb, BalloonDevInfo<T>, oom_nb) };
    let pages = T::oom_deflate(this);
    // SAFETY: `freed` is a valid counter per the safety requirements; OOM notifiers are called
    // one at a time, under the notifier chain's lock.
    unsafe { *freed.cast::<c_ulong>() += pages as c_ulong };
    bindings::NOTIFY_OK as c_int
}

/// The page reporting callback of every `BalloonDevInfo<T: BalloonReport>`.
///
/// # Safety
///
/// `prdev` must be the `pr_dev_info` of a live `BalloonDevInfo<T>`, and `sg` an array of `nents`
/// entries describing isolated free page blocks for the duration of the call, as
/// `page_reporting_process()` passes.
unsafe extern "C" fn report_callback<T: BalloonReport>(
    prdev: *mut bindings::page_reporting_dev_info,
    sg: *mut bindings::scatterlist,
    nents: c_uint,
) -> c_int {
    let prdev = Opaque::cast_from(prdev).cast_mut();
    // SAFETY: `prdev` is the `pr_dev_info` field of a `BalloonDevInfo<T>` per the safety
    // requirements, so the container is in the same allocation.
    let this = unsafe { &*crate::container_of!(prdev, BalloonDevInfo<T>, pr_dev_info) };
    let Some(sg) = NonNull::new(sg) else {
        return EINVAL.to_errno();
    };
    // INVARIANT: per the safety requirements, for the duration of the call which the borrow
    // does not outlive.
    let pages = ReportedPages {
        sg,
        nents,
        _p: PhantomData,
    };
    match T::report(this, &pages) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// The teardown of every `BalloonDevInfo<T>` at the end of its binding, leaked or not.
///
/// # Safety
///
/// `e` must be the `enrolment` of a live `BalloonDevInfo<T>`, which stays alive for the call.
unsafe fn revoke_callback<T: BalloonMigrate>(e: *const Enrolment) {
    // SAFETY: `e` is the `enrolment` field of a `BalloonDevInfo<T>` per the safety requirements,
    // so the container is in the same allocation and alive.
    let this = unsafe { &*crate::container_of!(e.cast_mut(), BalloonDevInfo<T>, enrolment) };
    this.end();
}

/// `page_reporting_register()`.
///
/// # Safety
///
/// `prdev` must be set up for registration and stay pinned until unregistered.
#[cfg(CONFIG_PAGE_REPORTING)]
unsafe fn page_reporting_register(prdev: *mut bindings::page_reporting_dev_info) -> Result {
    // SAFETY: Per the safety requirements.
    to_result(unsafe { bindings::page_reporting_register(prdev) })
}

/// Without `CONFIG_PAGE_REPORTING` there is no page reporting to register with.
///
/// # Safety
///
/// None; `unsafe` to match the function it stands in for.
#[cfg(not(CONFIG_PAGE_REPORTING))]
unsafe fn page_reporting_register(_prdev: *mut bindings::page_reporting_dev_info) -> Result {
    Err(EOPNOTSUPP)
}

/// `page_reporting_unregister()`.
///
/// # Safety
///
/// `prdev` must have been registered by [`page_reporting_register`].
#[cfg(CONFIG_PAGE_REPORTING)]
unsafe fn page_reporting_unregister(prdev: *mut bindings::page_reporting_dev_info) {
    // SAFETY: Per the safety requirements.
    unsafe { bindings::page_reporting_unregister(prdev) }
}

/// Without `CONFIG_PAGE_REPORTING` nothing can have been registered.
///
/// # Safety
///
/// None; `unsafe` to match the function it stands in for.
#[cfg(not(CONFIG_PAGE_REPORTING))]
unsafe fn page_reporting_unregister(_prdev: *mut bindings::page_reporting_dev_info) {}

/// An empty list of pages on the stack, linked through `page->lru`.
///
/// Pinned: the first and last pages of a list point back at its head.
fn with_page_list<R>(f: impl FnOnce(*mut bindings::list_head) -> R) -> R {
    let head = core::pin::pin!(Opaque::<bindings::list_head>::uninit());
    // SAFETY: `head` is valid for writes and pinned for as long as `f` can use it.
    unsafe { bindings::INIT_LIST_HEAD(head.get()) };
    f(head.get())
}

impl<T: BalloonMigrate> BalloonDevInfo<T> {
    /// Creates a balloon device whose migration callback runs on `data`, for the span of
    /// `binding`: when it ends, the device's callbacks are torn down and its pages freed, as on
    /// drop, even if it was never dropped. `ENODEV` if the binding has ended already.
    ///
    /// With `adjust_managed_page_count`, inflated pages are taken out of the managed page count
    /// (and so out of `MemTotal`), as the virtio balloon does unless it deflates on OOM.
    pub fn new<'b, E>(
        binding: Binding<'b>,
        adjust_managed_page_count: bool,
        data: impl PinInit<T, E> + 'b,
    ) -> impl PinInit<Self, Error> + 'b
    where
        T: 'b,
        E: 'b,
        Error: From<E>,
    {
        try_pin_init!(Self {
            raw: RawDevInfo {
                dev_info: Opaque::uninit(),
            },
            pages: Atomic::new(0),
            oom_nb: Opaque::uninit(),
            oom_state: Atomic::new(OFF),
            pr_dev_info: Opaque::zeroed(),
            pr_state: Atomic::new(OFF),
            ended: Atomic::new(false),
            enqueuers: Atomic::new(0),
            // SAFETY: `revoke_callback::<T>` may be called with this enrolment for as long as it
            // is enrolled: the drop of `Self` leaves first (type invariant), and it ends every
            // callback, as the drop does.
            enrolment <- unsafe { Enrolment::new(revoke_callback::<T>) },
            data <- data,
        }? Error)
        .pin_chain(move |this| {
            let b = this.raw.dev_info.get();
            // SAFETY: `b` is valid for writes and not shared with C yet.
            unsafe { bindings::balloon_devinfo_init(b) };
            // SAFETY: As above; the fields are plain data the C core reads under its lock once
            // pages are enqueued, which cannot have happened yet.
            unsafe {
                (*b).adjust_managed_page_count = adjust_managed_page_count;
                if cfg!(CONFIG_BALLOON_MIGRATION) {
                    // INVARIANT: the callback of this `BalloonDevInfo<T>`.
                    (*b).migratepage = Some(migrate_callback::<T>);
                }
            }
            // SAFETY: `enrolment` is a structurally pinned field of the pinned `this`.
            let enrolment = unsafe { Pin::new_unchecked(&this.enrolment) };
            // INVARIANT: Enrolled before anything can be registered or enqueued; should the
            // binding have ended, `this` is dropped, which does nothing left to do.
            enrolment.enrol(binding)
        })
    }

    fn as_raw(&self) -> *mut bindings::balloon_dev_info {
        self.raw.dev_info.get()
    }

    /// Changes whether inflated pages are taken out of the managed page count.
    ///
    /// Only possible while the balloon is empty (`EBUSY` otherwise), so that every page is
    /// accounted the same way going in and out.
    pub fn set_adjust_managed_page_count(self: Pin<&mut Self>, adjust: bool) -> Result {
        if self.pages() != 0 {
            return Err(EBUSY);
        }
        // SAFETY: With no page in the balloon the C core does not use the structure (type
        // invariant), and `&mut` excludes any use through this object.
        unsafe { (*self.as_raw()).adjust_managed_page_count = adjust };
        Ok(())
    }

    /// Allocates a page for the balloon, or returns `None` if memory is short. May sleep.
    ///
    /// See [`BalloonPage::alloc`].
    pub fn alloc_page(&self) -> Option<BalloonPage> {
        BalloonPage::alloc()
    }

    /// Allocates up to `max` pages for the balloon, handing each to `take`; returns how many,
    /// fewer only when memory is short. May sleep.
    ///
    /// See [`BalloonPage::alloc_bulk`].
    pub fn alloc_pages(&self, max: usize, take: impl FnMut(BalloonPage)) -> usize {
        BalloonPage::alloc_bulk(max, take)
    }

    /// Puts `page` in the balloon and returns its page frame number, to tell the host about.
    ///
    /// From now on the page may be migrated (see [`BalloonMigrate`]) and is freed by
    /// [`BalloonDevInfo::dequeue`]. `ENODEV` (and the page freed, not in the balloon: tell nobody)
    /// once the binding has ended.
    pub fn enqueue(&self, page: BalloonPage) -> Result<usize> {
        let pfn = page.pfn();
        if self.enqueue_many(core::iter::once(page)) == 0 {
            return Err(ENODEV);
        }
        Ok(pfn)
    }

    /// Lets an enqueue in: `false` once the binding has ended.
    ///
    /// Pairs with `end()`: each sets its own variable, fully ordered, before looking at the
    /// other's, so that either `end()` waits for this enqueue or this enqueue sees the end.
    fn start_enqueue(&self) -> bool {
        self.enqueuers.fetch_add(1, Full);
        if self.ended.load(Relaxed) {
            self.enqueuers.fetch_sub(1, Full);
            return false;
        }
        true
    }

    /// Puts all of `pages` in the balloon at once (`balloon_page_list_enqueue()`, one lock round
    /// trip) and returns how many there were.
    ///
    /// Once the binding has ended, takes none (the iterator is not advanced) and returns 0.
    pub fn enqueue_many(&self, pages: impl IntoIterator<Item = BalloonPage>) -> usize {
        if !self.start_enqueue() {
            return 0;
        }
        let n = with_page_list(|head| {
            let mut n = 0usize;
            for page in pages {
                // SAFETY: `head` is a valid list head; the page's `lru` is unused and its
                // ownership moves to the list (`BalloonPage` invariants).
                unsafe { bindings::balloon_list_push(head, page.into_raw().as_ptr()) };
                n += 1;
            }
            // INVARIANT: counted before they are in the balloon list.
            self.pages.add(n, Relaxed);
            // SAFETY: `as_raw()` is an initialised `balloon_dev_info` and `head` a list of
            // balloon pages owned by the list, which the call moves into the balloon.
            unsafe { bindings::balloon_page_list_enqueue(self.as_raw(), head) }
        });
        self.enqueuers.fetch_sub(1, Full);
        n
    }

    /// Takes a page out of the balloon, or returns `None` if none is available.
    ///
    /// `None` also while every page of a non-empty balloon is isolated for migration: try again
    /// later. Unlike the C `balloon_page_dequeue()`, never `BUG()`s on an empty balloon.
    pub fn dequeue(&self) -> Option<DeflatedPage> {
        let mut page = None;
        self.dequeue_many(1, |p| page = Some(p));
        page
    }

    /// Takes up to `n` pages out of the balloon at once (`balloon_page_list_dequeue()`, one lock
    /// round trip), hands each to `f`, and returns how many there were.
    ///
    /// Fewer than `n` when the balloon holds fewer, or while some are isolated for migration.
    pub fn dequeue_many(&self, n: usize, mut f: impl FnMut(DeflatedPage)) -> usize {
        with_page_list(|head| {
            // SAFETY: `as_raw()` is an initialised `balloon_dev_info` and `head` an empty list
            // head.
            let got = unsafe { bindings::balloon_page_list_dequeue(self.as_raw(), head, n) };
            // INVARIANT: the pages are out of the balloon.
            self.pages.fetch_sub(got, Relaxed);
            loop {
                // SAFETY: `head` is a valid list of pages linked through `lru`.
                let page = unsafe { bindings::balloon_list_pop(head) };
                let Some(page) = NonNull::new(page) else {
                    break;
                };
                // INVARIANT: dequeued by `balloon_page_list_dequeue()` and now unlinked; the
                // balloon's reference moves to the `DeflatedPage`.
                f(DeflatedPage(page));
            }
            got
        })
    }

    /// Number of pages in the balloon, including those isolated for migration.
    pub fn pages(&self) -> usize {
        self.pages.load(Relaxed)
    }

    /// Number of pages isolated for migration right now, for diagnostics and tests.
    ///
    /// A racy sample: the C core changes it under a lock private to `mm/balloon.c`.
    pub fn isolated_pages(&self) -> usize {
        // SAFETY: `as_raw()` is an initialised `balloon_dev_info`; the helper only reads it.
        unsafe { bindings::balloon_isolated_pages(self.as_raw()) }
    }

    /// Calls [`BalloonOom::oom_deflate`] when the system runs out of memory, from now until
    /// [`BalloonDevInfo::unregister_oom_notifier`] or the drop of the balloon.
    ///
    /// Notifiers run by decreasing `priority` (the C virtio balloon uses 80). `EBUSY` if already
    /// registered.
    pub fn register_oom_notifier(&self, priority: i32) -> Result
    where
        T: BalloonOom,
    {
        if !claim(&self.oom_state, OFF) {
            return Err(EBUSY);
        }
        // After the claim, fully ordered: `end()` either sees `BUSY` and waits, or is seen here.
        if self.ended.load(Relaxed) {
            self.oom_state.store(OFF, crate::sync::atomic::Release);
            return Err(ENODEV);
        }
        let nb = self.oom_nb.get();
        // SAFETY: `oom_nb` is not registered (`BUSY` excludes everyone else), so nothing else
        // reads it; it is valid for writes.
        unsafe {
            nb.write(bindings::notifier_block {
                notifier_call: Some(oom_callback::<T>),
                next: core::ptr::null_mut(),
                priority,
            })
        };
        // SAFETY: `nb` is an initialised notifier block that stays pinned until it is
        // unregistered, on drop or when the binding ends, whichever comes first (`end()`).
        let ret = to_result(unsafe { bindings::register_oom_notifier(nb) });
        // INVARIANT: registered exactly on success.
        let state = if ret.is_ok() { ON } else { OFF };
        self.oom_state.store(state, crate::sync::atomic::Release);
        ret
    }

    /// Stops calling [`BalloonOom::oom_deflate`]; waits for a call in progress. May sleep.
    ///
    /// Does nothing if the notifier is not registered.
    pub fn unregister_oom_notifier(&self) {
        if !claim(&self.oom_state, ON) {
            return;
        }
        // SAFETY: `ON` means `oom_nb` is registered (type invariant). Unregistering waits for
        // the callbacks in progress.
        unsafe { bindings::unregister_oom_notifier(self.oom_nb.get()) };
        // INVARIANT: no longer registered.
        self.oom_state.store(OFF, crate::sync::atomic::Release);
    }

    /// Starts free page reporting to [`BalloonReport::report`], until
    /// [`BalloonDevInfo::unregister_page_reporting`] or the drop of the balloon.
    ///
    /// `order` is the smallest free block to report (`None`: the core's default, `pageblock_order`
    /// unless set on the command line); `capacity` the most blocks per report (0 or more than 32:
    /// 32), typically the size of the reporting virtqueue. `EBUSY` if this or another device
    /// already reports: the kernel supports one.
    pub fn register_page_reporting(&self, order: Option<u32>, capacity: u32) -> Result
    where
        T: BalloonReport,
    {
        if !claim(&self.pr_state, OFF) {
            return Err(EBUSY);
        }
        // As for the OOM notifier.
        if self.ended.load(Relaxed) {
            self.pr_state.store(OFF, crate::sync::atomic::Release);
            return Err(ENODEV);
        }
        let prdev = self.pr_dev_info.get();
        // SAFETY: Not registered (`BUSY` excludes everyone else), so nothing else uses it. The
        // work and state fields are (re)initialised by `page_reporting_register()`.
        unsafe {
            (*prdev).report = Some(report_callback::<T>);
            (*prdev).order = match order {
                Some(order) => order,
                // `PAGE_REPORTING_ORDER_UNSPECIFIED` (-1) in the unsigned field, as C stores it.
                None => bindings::PAGE_REPORTING_ORDER_UNSPECIFIED as c_uint,
            };
            (*prdev).capacity = capacity;
        }
        // SAFETY: `prdev` is set up and stays pinned until it is unregistered, on drop or when
        // the binding ends, whichever comes first (`end()`).
        let ret = unsafe { page_reporting_register(prdev) };
        // INVARIANT: registered exactly on success.
        let state = if ret.is_ok() { ON } else { OFF };
        self.pr_state.store(state, crate::sync::atomic::Release);
        ret
    }

    /// Stops free page reporting; waits for a report in progress. May sleep.
    ///
    /// Does nothing if reporting is not registered.
    pub fn unregister_page_reporting(&self) {
        if !claim(&self.pr_state, ON) {
            return;
        }
        // SAFETY: `ON` means `pr_dev_info` is registered (type invariant). Unregistering waits
        // for the report in progress.
        unsafe { page_reporting_unregister(self.pr_dev_info.get()) };
        // INVARIANT: no longer registered.
        self.pr_state.store(OFF, crate::sync::atomic::Release);
    }
}

impl<T: BalloonMigrate> Deref for BalloonDevInfo<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: BalloonMigrate> BalloonDevInfo<T> {
    /// Ends the device for good, on drop or when its binding ends, whichever comes first: no
    /// callback runs from then on, no page is left inside and none is taken any more. May sleep.
    fn end(&self) {
        // INVARIANT: Fully ordered before looking at the registrations and the enqueuers, which
        // look at it after announcing themselves (`claim()`, `start_enqueue()`).
        self.ended.xchg(true, Full);
        // A (un)registration in progress either saw `ended` and backs out, or completes first.
        while self.oom_state.load(Relaxed) == BUSY || self.pr_state.load(Relaxed) == BUSY {
            fsleep(Delta::from_millis(1));
        }
        self.unregister_oom_notifier();
        self.unregister_page_reporting();
        while self.enqueuers.load(Relaxed) != 0 {
            fsleep(Delta::from_millis(1));
        }
        let left = self.pages();
        if left != 0 {
            pr_warn!("balloon: freeing {left} pages that were not deflated\n");
        }
        // Pages isolated for migration still refer to the C structure and come back to the list
        // (migrated or not) shortly: wait for them, so that no migration calls `T` any more.
        while self.pages() != 0 {
            if self.dequeue_many(usize::MAX, DeflatedPage::release) == 0 {
                fsleep(Delta::from_millis(1));
            }
        }
    }
}

#[pinned_drop]
impl<T: BalloonMigrate> PinnedDrop for BalloonDevInfo<T> {
    fn drop(self: Pin<&mut Self>) {
        // Off the binding's teardown list first (or after its teardown of `self`, if it is
        // running), so that the teardown never runs on a value being dropped.
        self.enrolment.leave();
        self.end();
    }
}

#[kunit_tests(rust_kernel_balloon)]
mod tests {
    use super::*;

    struct Refuse(Atomic<usize>);

    impl BalloonMigrate for Refuse {
        fn migrate(
            &self,
            _newpage: &MigratingPage<'_>,
            _page: &MigratingPage<'_>,
            _mode: MigrateMode,
        ) -> Result {
            self.0.add(1, Relaxed);
            Err(EAGAIN)
        }
    }

    /// Records what the migration callback was given and answers with `answer`.
    struct Record {
        calls: Atomic<usize>,
        newpfn: Atomic<usize>,
        oldpfn: Atomic<usize>,
        mode: Atomic<u32>,
        answer: Atomic<i32>,
    }

    impl BalloonMigrate for Record {
        fn migrate(
            &self,
            newpage: &MigratingPage<'_>,
            page: &MigratingPage<'_>,
            mode: MigrateMode,
        ) -> Result {
            self.calls.add(1, Relaxed);
            self.newpfn.store(newpage.pfn(), Relaxed);
            self.oldpfn.store(page.pfn(), Relaxed);
            self.mode.store(mode as u32, Relaxed);
            match self.answer.load(Relaxed) {
                0 => Ok(()),
                errno => Err(Error::from_errno(errno)),
            }
        }
    }

    #[test]
    fn migratepage_reaches_the_rust_callback() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            // SAFETY: `b` is initialised and only read.
            let hook = unsafe { (*b.as_raw()).migratepage };
            if !cfg!(CONFIG_BALLOON_MIGRATION) {
                assert!(hook.is_none());
                return Ok(());
            }
            let hook = hook.ok_or(EINVAL)?;
            // Two ordinary pages stand in for the isolated page and its replacement: the callback
            // path only looks at their frame numbers.
            let newpage = BalloonPage::alloc().ok_or(ENOMEM)?;
            let page = BalloonPage::alloc().ok_or(ENOMEM)?;
            let call = |mode| {
                // SAFETY: `hook` is the migration callback of the live `b`, and both pages are
                // valid for the duration of the call.
                unsafe { hook(b.as_raw(), newpage.0.as_ptr(), page.0.as_ptr(), mode) }
            };

            assert_eq!(call(bindings::migrate_mode::MIGRATE_SYNC_LIGHT), 0);
            assert_eq!(b.calls.load(Relaxed), 1);
            assert_eq!(b.newpfn.load(Relaxed), newpage.pfn());
            assert_eq!(b.oldpfn.load(Relaxed), page.pfn());
            assert_eq!(b.mode.load(Relaxed), MigrateMode::SyncLight as u32);

            // Errors reach the C core, except "old page deflated, new page not" which is refused.
            b.answer.store(EBUSY.to_errno(), Relaxed);
            assert_eq!(
                call(bindings::migrate_mode::MIGRATE_ASYNC),
                EBUSY.to_errno()
            );
            b.answer.store(ENOENT.to_errno(), Relaxed);
            assert_eq!(
                call(bindings::migrate_mode::MIGRATE_SYNC),
                EAGAIN.to_errno()
            );
            assert_eq!(b.mode.load(Relaxed), MigrateMode::Sync as u32);
            assert_eq!(b.calls.load(Relaxed), 3);

            // A mode C does not define never reaches the driver.
            assert_eq!(call(bindings::migrate_mode(1000)), EINVAL.to_errno());
            assert_eq!(b.calls.load(Relaxed), 3);
            // Nothing was enqueued: the balloon's accounting is untouched by the callback.
            assert_eq!(b.pages(), 0);
            Ok(())
        })
    }

    impl BalloonOom for Record {
        fn oom_deflate(balloon: &BalloonDevInfo<Self>) -> usize {
            balloon.calls.add(1, Relaxed);
            // Give back everything there is, as a driver would up to its per-call limit.
            balloon.dequeue_many(usize::MAX, DeflatedPage::release)
        }
    }

    fn record() -> Record {
        Record {
            calls: Atomic::new(0),
            newpfn: Atomic::new(0),
            oldpfn: Atomic::new(0),
            mode: Atomic::new(u32::MAX),
            answer: Atomic::new(0),
        }
    }

    /// `new_folio_t` for `migrate_pages()`: a fresh page, like a compaction target.
    ///
    /// # Safety
    ///
    /// None: `unsafe` because C calls it through a pointer. The arguments are not used.
    #[cfg(CONFIG_BALLOON_MIGRATION)]
    unsafe extern "C" fn new_folio(
        _src: *mut bindings::folio,
        _private: c_ulong,
    ) -> *mut bindings::folio {
        // SAFETY: No preconditions. An order-0 page is its own folio, hence the cast.
        unsafe { bindings::balloon_page_alloc() }.cast()
    }

    /// Migrates `page`, an inflated page of `b`, the way compaction does: isolate it through its
    /// movable operations, then `migrate_pages()` it; puts it back if that fails.
    #[cfg(CONFIG_BALLOON_MIGRATION)]
    fn compact_one(b: &BalloonDevInfo<Record>, page: NonNull<bindings::page>) -> Result<c_int> {
        with_page_list(|head| {
            // SAFETY: `page` is in the balloon, hence valid; isolation takes its own reference.
            if !unsafe { bindings::isolate_movable_ops_page(page.as_ptr(), 0) } {
                return Err(EBUSY);
            }
            assert_eq!(b.isolated_pages(), 1);
            // The page is isolated and in the balloon count, but not on its list.
            assert_eq!(b.pages(), 1);
            // SAFETY: The `lru` of an isolated page belongs to the isolator.
            unsafe { bindings::balloon_list_push(head, page.as_ptr()) };
            // SAFETY: `head` is a list of isolated movable pages; `new_folio` allocates targets.
            let ret = unsafe {
                bindings::migrate_pages(
                    head,
                    Some(new_folio),
                    None,
                    0,
                    bindings::migrate_mode::MIGRATE_SYNC,
                    bindings::migrate_reason_MR_COMPACTION,
                    core::ptr::null_mut(),
                )
            };
            if ret != 0 {
                // SAFETY: `head` holds the pages `migrate_pages()` could not migrate.
                unsafe { bindings::putback_movable_pages(head) };
            }
            Ok(ret)
        })
    }

    #[test]
    fn compaction_migrates_through_the_callback() -> Result {
        crate::binding::scope(|binding| -> Result {
            #[cfg(CONFIG_BALLOON_MIGRATION)]
            {
                let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;

                // The driver accepts: the new page replaces the old one in the balloon.
                let page = b.alloc_page().ok_or(ENOMEM)?;
                let raw = page.0;
                let pfn = b.enqueue(page)?;
                assert_eq!(compact_one(&b, raw)?, 0);
                assert_eq!(b.calls.load(Relaxed), 1);
                assert_eq!(b.oldpfn.load(Relaxed), pfn);
                // `migrate_pages()` in sync mode first tries everything in async mode, in one
                // batch.
                assert_eq!(b.mode.load(Relaxed), MigrateMode::Async as u32);
                let newpfn = b.newpfn.load(Relaxed);
                assert!(newpfn != pfn);
                assert_eq!(b.pages(), 1);
                assert_eq!(b.isolated_pages(), 0);
                let page = b.dequeue().ok_or(EINVAL)?;
                assert_eq!(page.pfn(), newpfn);
                page.release();

                // The driver refuses: the old page goes back to the balloon list.
                b.answer.store(EBUSY.to_errno(), Relaxed);
                let page = b.alloc_page().ok_or(ENOMEM)?;
                let raw = page.0;
                let pfn = b.enqueue(page)?;
                assert!(compact_one(&b, raw)? != 0);
                assert!(b.calls.load(Relaxed) >= 2);
                assert_eq!(b.oldpfn.load(Relaxed), pfn);
                assert_eq!(b.pages(), 1);
                assert_eq!(b.isolated_pages(), 0);
                let page = b.dequeue().ok_or(EINVAL)?;
                assert_eq!(page.pfn(), pfn);
                page.release();
                assert_eq!(b.pages(), 0);
            }
            Ok(())
        })
    }

    #[test]
    fn oom_notifier_deflates() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            b.register_oom_notifier(80)?;
            assert_eq!(b.register_oom_notifier(80), Err(EBUSY));
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;

            // Call the notifier the way `out_of_memory()` does, without running out of memory.
            let nb = b.oom_nb.get();
            // SAFETY: `nb` is initialised and registered, so only read by the notifier chain.
            let call = unsafe { (*nb).notifier_call }.ok_or(EINVAL)?;
            let mut freed: c_ulong = 5;
            // SAFETY: `nb` is the `oom_nb` of the live `b` and `freed` a valid counter.
            let ret = unsafe { call(nb, 0, (&raw mut freed).cast()) };
            assert_eq!(ret, bindings::NOTIFY_OK as c_int);
            // The two pages are added to what earlier notifiers freed.
            assert_eq!(freed, 7);
            assert_eq!(b.calls.load(Relaxed), 1);
            assert_eq!(b.pages(), 0);

            b.unregister_oom_notifier();
            // Unregistering twice is harmless, and registering again works.
            b.unregister_oom_notifier();
            b.register_oom_notifier(0)?;
            // Dropping the balloon unregisters the notifier.
            drop(b);
            Ok(())
        })
    }

    impl BalloonReport for Record {
        fn report(balloon: &BalloonDevInfo<Self>, pages: &ReportedPages<'_>) -> Result {
            balloon.calls.add(1, Relaxed);
            let (_, bytes) = pages.get(0).ok_or(EINVAL)?;
            balloon.newpfn.store(bytes, Relaxed);
            balloon.oldpfn.store(pages.len(), Relaxed);
            assert!(pages.get(pages.len()).is_none());
            match balloon.answer.load(Relaxed) {
                0 => Ok(()),
                errno => Err(Error::from_errno(errno)),
            }
        }
    }

    #[test]
    fn page_reporting_callback() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            if !cfg!(CONFIG_PAGE_REPORTING) {
                assert_eq!(b.register_page_reporting(None, 0), Err(EOPNOTSUPP));
                return Ok(());
            }
            // The default order, so that the first registration (which fixes the order for good)
            // picks what the virtio balloon would pick anyway.
            b.register_page_reporting(None, 0)?;
            assert_eq!(b.register_page_reporting(None, 0), Err(EBUSY));
            b.unregister_page_reporting();
            b.unregister_page_reporting();

            // Call the callback as `page_reporting_process()` would, with one 4 KiB block.
            b.register_page_reporting(None, 0)?;
            // SAFETY: Registered, so only read by page reporting.
            let report = unsafe { (*b.pr_dev_info.get()).report }.ok_or(EINVAL)?;
            let buf = KBox::new([0u8; 4096], GFP_KERNEL)?;
            let mut sg = pin_init::zeroed::<bindings::scatterlist>();
            // SAFETY: `sg` is a valid entry and `buf` a valid kernel buffer of the given length.
            unsafe { bindings::sg_init_one(&mut sg, buf.as_ptr().cast(), 4096) };
            let mut call = || {
                // SAFETY: `b` is alive and `sg` describes one valid block for the call.
                unsafe { report(b.pr_dev_info.get(), &raw mut sg, 1) }
            };
            assert_eq!(call(), 0);
            assert_eq!(b.calls.load(Relaxed), 1);
            assert_eq!(b.newpfn.load(Relaxed), 4096);
            assert_eq!(b.oldpfn.load(Relaxed), 1);
            b.answer.store(EIO.to_errno(), Relaxed);
            assert_eq!(call(), EIO.to_errno());
            // Dropping the balloon unregisters it.
            drop(b);
            Ok(())
        })
    }

    #[test]
    fn poison_queries() {
        // Both cannot be on at once: `init_on_free` disables poisoning.
        assert!(!(want_init_on_free() && page_poisoning_enabled()));
        assert_eq!(PAGE_POISON, 0xaa);
    }

    #[test]
    fn migrate_mode_roundtrip() {
        for mode in [
            MigrateMode::Async,
            MigrateMode::SyncLight,
            MigrateMode::Sync,
        ] {
            assert_eq!(MigrateMode::from_raw(mode.as_raw()), Ok(mode));
            assert_eq!(bindings::migrate_mode(mode as u32), mode.as_raw());
        }
        assert!(!MigrateMode::Async.may_block());
        assert!(MigrateMode::Sync.may_block());
        assert_eq!(
            MigrateMode::from_raw(bindings::migrate_mode(1000)),
            Err(EINVAL)
        );
    }

    #[test]
    fn inflate_deflate_roundtrip() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(
                BalloonDevInfo::new(binding, false, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            assert_eq!(b.pages(), 0);
            assert!(b.dequeue().is_none());

            let mut pfns = KVec::new();
            for _ in 0..4 {
                let page = b.alloc_page().ok_or(ENOMEM)?;
                let pfn = page.pfn();
                assert_eq!(b.enqueue(page)?, pfn);
                pfns.push(pfn, GFP_KERNEL)?;
            }
            let batch = [b.alloc_page().ok_or(ENOMEM)?, b.alloc_page().ok_or(ENOMEM)?];
            assert_eq!(b.enqueue_many(batch), 2);
            assert_eq!(b.pages(), 6);

            // Nothing triggers compaction here, so every page is on the list.
            let page = b.dequeue().ok_or(EINVAL)?;
            assert_eq!(b.pages(), 5);
            page.release();
            let mut out = KVec::new();
            let got = b.dequeue_many(3, |p| {
                let _ = out.push(p.pfn(), GFP_KERNEL);
            });
            assert_eq!(got, 3);
            assert_eq!(out.len(), 3);
            assert_eq!(b.pages(), 2);
            // Asking for more than is there returns what is there.
            assert_eq!(b.dequeue_many(10, DeflatedPage::release), 2);
            assert_eq!(b.pages(), 0);
            assert!(b.dequeue().is_none());
            assert_eq!(b.isolated_pages(), 0);
            Ok(())
        })
    }

    #[test]
    fn a_deflation_the_host_missed_goes_back_in() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(
                BalloonDevInfo::new(binding, false, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            let page = b.alloc_page().ok_or(ENOMEM)?;
            let pfn = b.enqueue(page)?;
            let page = b.dequeue().ok_or(EINVAL)?;
            assert_eq!(b.pages(), 0);
            // The same page, balloon-owned again: it can be enqueued, dequeued and released.
            assert_eq!(b.enqueue(page.keep())?, pfn);
            assert_eq!(b.pages(), 1);
            let page = b.dequeue().ok_or(EINVAL)?;
            assert_eq!(page.pfn(), pfn);
            page.release();
            assert_eq!(b.pages(), 0);
            Ok(())
        })
    }

    #[test]
    fn no_whole_block_while_smaller_free_pages_are_left() -> Result {
        // Holes: free 2 MiB blocks taken and every other page of each given back, until the
        // free pages smaller than a block are more than the policy lets stay free (a KUnit
        // guest has free 2 MiB blocks right after boot).
        let order = BalloonBlock::HUGE_ORDER;
        let mut kept = KVec::new();
        loop {
            let (smaller, most) = BalloonBlock::smaller_free(order);
            if smaller >= most + (1 << order) {
                break;
            }
            let block = BalloonBlock::alloc_if_free(order).ok_or(ENOMEM)?;
            for (i, page) in block.enumerate() {
                if i % 2 == 0 {
                    kept.push(page, GFP_KERNEL)?;
                }
            }
            // At most 256 MiB of holes: a guest with more free memory needs no more.
            if kept.len() >= 1 << 16 {
                return Err(ENOMEM);
            }
        }
        // Single pages would take those first: so does the policy.
        assert!(BalloonBlock::alloc_if_smallest(order).is_none());
        // Beyond the page allocator's orders there is never a block.
        assert!(BalloonBlock::alloc_if_smallest(bindings::MAX_PAGE_ORDER + 1).is_none());
        Ok(())
    }

    #[test]
    fn bulk_pages_fill_holes_before_free_blocks() -> Result {
        // Holes: a free 2 MiB block taken, every other page of it given back. A KUnit guest
        // has free 2 MiB blocks right after boot; without one, there is nothing to show.
        let block = BalloonBlock::alloc_if_free(BalloonBlock::HUGE_ORDER).ok_or(ENOMEM)?;
        let n = block.pages();
        let mut kept = KVec::with_capacity(n / 2, GFP_KERNEL)?;
        let mut base = None;
        for (i, page) in block.enumerate() {
            base.get_or_insert(page.pfn());
            if i % 2 == 0 {
                kept.push(page, GFP_KERNEL)?;
            }
        }
        let base = base.ok_or(EINVAL)?;
        // Bulk single pages take those holes (the per-cpu list, then the smallest free blocks)
        // before they split a free 2 MiB block, as one-at-a-time allocations do. Other pages
        // freed meanwhile may come first: at least half must be holes.
        let mut got = KVec::with_capacity(n / 2, GFP_KERNEL)?;
        let taken = BalloonPage::alloc_bulk(n / 2, |page| {
            let _ = got.push_within_capacity(page);
        });
        assert_eq!(taken, n / 2);
        assert_eq!(got.len(), n / 2);
        let in_holes = got
            .iter()
            .filter(|p| (base..base + n).contains(&p.pfn()))
            .count();
        assert!(in_holes >= n / 4);
        // Every page is a distinct order-0 page of its own.
        let mut pfns = KVec::with_capacity(got.len(), GFP_KERNEL)?;
        for p in got.iter() {
            pfns.push(p.pfn(), GFP_KERNEL)?;
        }
        pfns.sort_unstable();
        assert!(pfns.windows(2).all(|w| w[0] != w[1]));
        Ok(())
    }

    #[test]
    fn a_block_is_enqueued_page_by_page_in_frame_order() -> Result {
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(
                BalloonDevInfo::new(binding, false, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            assert!(BalloonBlock::alloc_if_free(bindings::MAX_PAGE_ORDER + 1).is_none());
            // A KUnit guest has free 2 MiB blocks right after boot; should it have none, the
            // balloon would take single pages, which the other tests cover.
            let Some(block) = BalloonBlock::alloc_if_free(BalloonBlock::HUGE_ORDER) else {
                return Ok(());
            };
            let n = block.pages();
            assert_eq!(n, 1 << BalloonBlock::HUGE_ORDER);
            let mut first = None;
            let mut expect = 0;
            let enqueued = b.enqueue_many(block.inspect(|page| {
                let pfn = page.pfn();
                let base = *first.get_or_insert(pfn);
                assert_eq!(pfn, base + expect);
                expect += 1;
            }));
            assert_eq!(enqueued, n);
            assert_eq!(b.pages(), n);
            let base = first.ok_or(EINVAL)?;
            // Naturally aligned, as the page allocator hands out blocks.
            assert_eq!(base % n, 0);
            // Every page leaves the balloon on its own.
            assert_eq!(b.dequeue_many(n, DeflatedPage::release), n);
            assert_eq!(b.pages(), 0);
            Ok(())
        })
    }

    #[test]
    fn a_block_frees_the_pages_not_taken() -> Result {
        let Some(mut block) = BalloonBlock::alloc_if_free(2) else {
            return Ok(());
        };
        let page = block.next().ok_or(EINVAL)?;
        assert_eq!(block.size_hint(), (3, Some(3)));
        // One page on its own, the other three with the block: nothing leaks (kmemleak and the
        // debug guest's page checks would see it), nothing is freed twice.
        drop(page);
        drop(block);
        Ok(())
    }

    #[test]
    fn drop_frees_leftover_pages() -> Result {
        crate::binding::scope(|binding| -> Result {
            let mut b = KBox::pin_init(
                BalloonDevInfo::new(binding, true, Refuse(Atomic::new(0))),
                GFP_KERNEL,
            )?;
            // The accounting mode can change while the balloon is empty, not once it holds pages.
            b.as_mut().set_adjust_managed_page_count(false)?;
            let page = b.alloc_page().ok_or(ENOMEM)?;
            b.enqueue(page)?;
            assert_eq!(b.as_mut().set_adjust_managed_page_count(true), Err(EBUSY));
            assert_eq!(b.pages(), 1);
            // Dropping with a page in the balloon frees it (with a warning) instead of leaking it.
            drop(b);
            Ok(())
        })
    }

    #[test]
    fn a_leaked_balloon_is_torn_down_when_its_binding_ends() -> Result {
        let mut leaked: *const BalloonDevInfo<Record> = core::ptr::null();
        crate::binding::scope(|binding| -> Result {
            let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL)?;
            b.register_oom_notifier(80)?;
            b.register_page_reporting(None, 0).or_else(|e| {
                // Another device may report already, or the kernel has no page reporting.
                if e == EBUSY || e == EOPNOTSUPP {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;
            b.enqueue(b.alloc_page().ok_or(ENOMEM)?)?;
            // What `core::mem::forget` of the box does: its drop never runs.
            // SAFETY: The value is not moved: the box is only turned into a pointer, dropped
            // below.
            leaked = KBox::into_raw(unsafe { Pin::into_inner_unchecked(b) });
            Ok(())
        })?;
        // SAFETY: The leaked box is alive until it is rebuilt and dropped at the end.
        let b = unsafe { &*leaked };
        // The end of the binding did what the drop would have: no callback, no page left.
        assert_eq!(b.oom_state.load(Relaxed), OFF);
        assert_eq!(b.pr_state.load(Relaxed), OFF);
        assert_eq!(b.pages(), 0);
        // And nothing comes back: no page goes in (it is freed instead), no callback either.
        let page = b.alloc_page().ok_or(ENOMEM)?;
        assert_eq!(b.enqueue(page), Err(ENODEV));
        assert_eq!(b.pages(), 0);
        assert_eq!(b.register_oom_notifier(80), Err(ENODEV));
        assert_eq!(b.register_page_reporting(None, 0), Err(ENODEV));
        // Dropping it afterwards finds nothing left to do.
        // SAFETY: `leaked` comes from `KBox::into_raw` and is not used afterwards.
        drop(unsafe { KBox::from_raw(leaked.cast_mut()) });
        Ok(())
    }

    #[test]
    fn no_balloon_once_its_binding_has_ended() -> Result {
        pin_init::stack_pin_init!(let teardown = crate::binding::Teardown::new());
        // SAFETY: `teardown` is pinned on this frame and runs right away, before anything the
        // binding could cover goes away.
        let binding = unsafe { crate::binding::Teardown::binding(core::ptr::from_ref(&*teardown)) };
        teardown.run();
        let b = KBox::pin_init(BalloonDevInfo::new(binding, false, record()), GFP_KERNEL);
        assert_eq!(b.err(), Some(ENODEV));
        Ok(())
    }
}
