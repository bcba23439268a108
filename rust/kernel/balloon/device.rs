// SPDX-License-Identifier: GPL-2.0

//! A balloon device: the C core's `struct balloon_dev_info`, its page list and accounting, and the
//! callbacks the core, the OOM path and page reporting run on the driver's data.

use super::{BalloonPage, DeflatedPage, MigrateMode, MigratingPage, ReportedPages};
use crate::{
    binding::{Binding, Enrolment},
    bindings,
    error::{code::*, Result},
    ffi::{c_int, c_uint, c_ulong, c_void},
    oom, page_reporting,
    prelude::*,
    sync::atomic::{Atomic, Full, Relaxed},
    time::{delay::fsleep, Delta},
    types::Opaque,
};
use core::{ops::Deref, pin::Pin, ptr::NonNull};

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
/// - `oom`, when registered, calls `oom_callback::<T>`; `reporting`, when registered,
///   `report_callback::<T>`. Neither is registered once `ended` is set and they have settled.
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
    pub(super) oom: oom::Notifier,
    #[pin]
    pub(super) reporting: page_reporting::Device,
    ended: Atomic<bool>,
    enqueuers: Atomic<usize>,
    #[pin]
    enrolment: Enrolment,
    #[pin]
    data: T,
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
/// `nb` must be the notifier block of the `oom` of a live `BalloonDevInfo<T>`, and `freed` the
/// counter of freed pages `out_of_memory()` passes to its notifiers.
unsafe extern "C" fn oom_callback<T: BalloonOom>(
    nb: *mut bindings::notifier_block,
    _action: c_ulong,
    freed: *mut c_void,
) -> c_int {
    // SAFETY: `nb` is the block of a live `oom::Notifier` per the safety requirements.
    let notifier = unsafe { oom::Notifier::from_raw(nb) };
    let notifier = core::ptr::from_ref(notifier).cast_mut();
    // SAFETY: The notifier is the `oom` field of a live `BalloonDevInfo<T>` per the safety
    // requirements, so the container is in the same allocation.
    let this = unsafe { &*crate::container_of!(notifier, BalloonDevInfo<T>, oom) };
    let pages = T::oom_deflate(this);
    // SAFETY: `freed` is the counter of this call per the safety requirements.
    unsafe { oom::add_freed(freed, pages) };
    bindings::NOTIFY_OK as c_int
}

/// The page reporting callback of every `BalloonDevInfo<T: BalloonReport>`.
///
/// # Safety
///
/// `prdev` must be the structure of the `reporting` of a live `BalloonDevInfo<T>`, and `sg` and
/// `nents` what `page_reporting_process()` passes to the callback.
unsafe extern "C" fn report_callback<T: BalloonReport>(
    prdev: *mut bindings::page_reporting_dev_info,
    sg: *mut bindings::scatterlist,
    nents: c_uint,
) -> c_int {
    // SAFETY: `prdev` is the structure of a live `page_reporting::Device` per the safety
    // requirements.
    let device = unsafe { page_reporting::Device::from_raw(prdev) };
    let device = core::ptr::from_ref(device).cast_mut();
    // SAFETY: The device is the `reporting` field of a live `BalloonDevInfo<T>` per the safety
    // requirements, so the container is in the same allocation.
    let this = unsafe { &*crate::container_of!(device, BalloonDevInfo<T>, reporting) };
    let Some(sg) = NonNull::new(sg) else {
        return EINVAL.to_errno();
    };
    // SAFETY: What page reporting passed to this call, which `pages` does not outlive.
    let pages = unsafe { ReportedPages::from_raw(sg, nents) };
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

/// An empty list of pages on the stack, linked through `page->lru`.
///
/// Pinned: the first and last pages of a list point back at its head.
pub(super) fn with_page_list<R>(f: impl FnOnce(*mut bindings::list_head) -> R) -> R {
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
            oom <- oom::Notifier::new(),
            reporting <- page_reporting::Device::new(),
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

    pub(super) fn as_raw(&self) -> *mut bindings::balloon_dev_info {
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
        // SAFETY: `oom_callback::<T>` may run on `self.oom` while it is registered: it stays
        // pinned in `self`, and is unregistered on drop or when the binding ends, whichever comes
        // first (`end()`), which refuses registrations from then on (`allowed`).
        unsafe {
            self.oom
                .register(oom_callback::<T>, priority, || !self.ended.load(Relaxed))
        }
    }

    /// Stops calling [`BalloonOom::oom_deflate`]; waits for a call in progress. May sleep.
    ///
    /// Does nothing if the notifier is not registered.
    pub fn unregister_oom_notifier(&self) {
        self.oom.unregister();
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
        // SAFETY: As for the OOM notifier, with `report_callback::<T>` and `self.reporting`.
        unsafe {
            self.reporting
                .register(report_callback::<T>, order, capacity, || {
                    !self.ended.load(Relaxed)
                })
        }
    }

    /// Stops free page reporting; waits for a report in progress. May sleep.
    ///
    /// Does nothing if reporting is not registered.
    pub fn unregister_page_reporting(&self) {
        self.reporting.unregister();
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
        self.oom.settle();
        self.reporting.settle();
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
