// SPDX-License-Identifier: GPL-2.0

//! Movable pages that are not on the LRU: `struct movable_operations`.
//!
//! Compaction, memory offlining and `alloc_contig_range()` move pages to free a frame. Pages on
//! the LRU they move themselves; a few kinds of kernel-owned pages (inflated balloon pages,
//! zsmalloc pages) instead carry the `PG_movable_ops` flag, and the migration core asks their
//! owner to let go of them through the `movable_operations` registered for their page type.
//! Since Linux 7.0 there is one set of operations per page type, registered with
//! `set_movable_ops()`; [`Registration`] does that for a Rust implementation of [`MovableOps`].
//!
//! C header: [`include/linux/migrate.h`](srctree/include/linux/migrate.h)
//!
//! # The protocol
//!
//! 1. **Isolate.** A scanner finds a page with `PG_movable_ops` without any lock, takes a
//!    reference (failing on a page being freed), trylocks the page and, unless the page is
//!    isolated already, calls [`MovableOps::isolate`] with a [`CandidatePage`]. The owner
//!    decides whether it can give the page away now. If it returns `true`, the migration core
//!    marks the page isolated and keeps its reference.
//! 2. **Migrate.** Later, with the isolated page and a freshly allocated destination page both
//!    locked, the core calls [`MovableOps::migrate`] with an [`IsolatedPage`] and a
//!    [`TargetPage`]. `Ok(())` means the owner now uses the destination in place of the source
//!    and has let go of the source; the core then frees the source. `Err(EAGAIN)` is a temporary
//!    failure: the core tries again a few times, then puts the page back. Any other error is
//!    permanent: the core gives up at once and puts the page back.
//! 3. **Put back.** When migration fails or is abandoned, the core calls
//!    [`MovableOps::putback`] with the [`IsolatedPage`]: the owner takes it back onto its own
//!    structures, and the core drops its reference.
//!
//! # Rules for the owner (seeds of the balloon compaction interface, as they hold in 7.3)
//!
//! - **`lru` belongs to the migration core while a page is isolated.** `isolate` must take the
//!   page off every list of the owner that links it through `page->lru`, because the core links
//!   isolated pages on its own list through that field. Between a successful `isolate` and the
//!   `migrate`/`putback` that ends the isolation the owner must not touch `lru`, and `putback` is
//!   where it may link the page again. The page types here expose no access to `lru` at all.
//! - **The owner's bookkeeping changes under the owner's lock.** The state `isolate` looks at to
//!   decide (for the balloon: `page->private`, the owning device) and the owner's lists are only
//!   changed under one lock of the owner, which `isolate`, `putback` and the owner's own
//!   enqueue/dequeue all take. `isolate` runs with the page lock held and preemption enabled, so
//!   the owner's lock is a spinlock taken inside the page lock, never the other way round.
//! - **A page without an owner cannot be isolated.** A page whose owner pointer is cleared is
//!   either still being set up or already being released by the owner, which uses `lru` for its
//!   own list of pages to free: isolating it would unlink it from a list it is not on (or from
//!   the releaser's list). So the owner clears the pointer under its lock, in the same critical
//!   section that takes the page off its list, and `isolate` returns `false` for such a page.
//!   For the same reason an isolated page cannot be released by its owner: it is not on the
//!   owner's list, so only `migrate` or `putback` can end its life in the owner's hands.
//! - **The page type is sticky.** The type that selected these operations (for instance
//!   `PageOffline`) and `PG_movable_ops` stay set until the page is freed to the page
//!   allocator, because the lockless scanner may look at any time. An owner clears its own state
//!   instead (for the balloon, `page->private`).
//! - **`migrate` may not sleep in [`MigrateMode::Async`].**

use crate::{bindings, error::to_result, prelude::*};
use core::{marker::PhantomData, ptr::NonNull};

/// How hard a migration may try (`enum migrate_mode`).
///
/// Moving a non-LRU page needs no copy of user mappings, so an owner mostly needs to know whether
/// it may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MigrateMode {
    /// `MIGRATE_ASYNC`: never block.
    Async = bindings::migrate_mode::MIGRATE_ASYNC.0,
    /// `MIGRATE_SYNC_LIGHT`: may block on most operations, but not on long writeback.
    SyncLight = bindings::migrate_mode::MIGRATE_SYNC_LIGHT.0,
    /// `MIGRATE_SYNC`: may block.
    Sync = bindings::migrate_mode::MIGRATE_SYNC.0,
}

impl MigrateMode {
    /// Converts a C `enum migrate_mode`; `EINVAL` for a value that is not one of its variants.
    ///
    /// The binding is a newtype (`rust/bindgen_parameters`) carrying the enum's kCFI encoding, so
    /// that functions taking it have the type id C gives them.
    pub fn from_raw(mode: bindings::migrate_mode) -> Result<Self> {
        [Self::Async, Self::SyncLight, Self::Sync]
            .into_iter()
            .find(|m| m.as_raw() == mode)
            // Not an enumerator: C passed garbage, there is nothing to map it to.
            .ok_or(EINVAL)
    }

    /// The C `enum migrate_mode` value.
    pub fn as_raw(self) -> bindings::migrate_mode {
        bindings::migrate_mode(self as u32)
    }

    /// Whether the migration may sleep, e.g. on a mutex.
    pub fn may_block(self) -> bool {
        match self {
            Self::Async => false,
            Self::SyncLight | Self::Sync => true,
        }
    }
}

/// What the isolating code is after (`isolate_mode_t`), passed through to
/// [`MovableOps::isolate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolateMode(bindings::isolate_mode_t);

impl IsolateMode {
    /// The raw `isolate_mode_t` bits (`ISOLATE_*`).
    pub fn bits(self) -> bindings::isolate_mode_t {
        self.0
    }
}

/// The page types that can have movable operations (`enum pagetype`, as `set_movable_ops()`
/// accepts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PageType {
    /// `PGTY_offline`: pages taken away from the page allocator, e.g. inflated balloon pages.
    Offline = bindings::pagetype_PGTY_offline,
    /// `PGTY_zsmalloc`: zsmalloc pages.
    Zsmalloc = bindings::pagetype_PGTY_zsmalloc,
}

/// Returns the page frame number of `page`.
///
/// # Safety
///
/// `page` must point to a valid `struct page`.
unsafe fn page_pfn(page: NonNull<bindings::page>) -> usize {
    // SAFETY: `page` is valid per the safety requirements; `page_to_pfn()` only computes its
    // index in the memory map.
    unsafe { bindings::movable_page_to_pfn(page.as_ptr()) }
}

macro_rules! page_ref {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub struct $name<'a>(NonNull<bindings::page>, PhantomData<&'a bindings::page>);

        impl $name<'_> {
            /// # Safety
            ///
            /// `page` must satisfy the type invariants for the lifetime of the result.
            unsafe fn from_raw(page: *mut bindings::page) -> Option<Self> {
                NonNull::new(page).map(|p| Self(p, PhantomData))
            }

            /// The `struct page`, for the owner's own bookkeeping (for instance
            /// `page->private`), which it changes under its own lock; see the module
            /// documentation for what must not be touched.
            pub fn as_raw(&self) -> *mut bindings::page {
                self.0.as_ptr()
            }

            /// The page frame number of the page.
            pub fn pfn(&self) -> usize {
                // SAFETY: By the type invariant, `self.0` is a valid page.
                unsafe { page_pfn(self.0) }
            }
        }
    };
}

page_ref! {
    /// A page with `PG_movable_ops` that the migration core wants to isolate, lent to
    /// [`MovableOps::isolate`].
    ///
    /// Only the migration core makes these: an owner cannot call its own callbacks with a page
    /// that was not offered.
    ///
    /// # Invariants
    ///
    /// For `'a`, `self.0` points to a page of the registered type with `PG_movable_ops`, locked,
    /// not isolated, on which the migration core holds a reference.
    CandidatePage
}

page_ref! {
    /// A page the owner gave away in [`MovableOps::isolate`], lent to [`MovableOps::migrate`] and
    /// [`MovableOps::putback`].
    ///
    /// # Invariants
    ///
    /// For `'a`, `self.0` points to a page of the registered type for which the owner's
    /// `isolate` returned `true` and whose isolation has not ended; its `lru` field belongs to
    /// the migration core, which holds a reference and the page lock.
    IsolatedPage
}

page_ref! {
    /// The page an [`IsolatedPage`] is migrated to, lent to [`MovableOps::migrate`].
    ///
    /// # Invariants
    ///
    /// For `'a`, `self.0` points to a freshly allocated order-0 page, locked by the migration
    /// core, which holds the allocation's reference and drops it after the migration: an owner
    /// that keeps the page takes a reference of its own.
    TargetPage
}

/// The movable operations of one page type.
///
/// The functions take no `self`: the migration core knows pages, not owners, so an owner finds
/// itself from the page (the balloon keeps its device in `page->private`). See the module
/// documentation for the protocol and the rules.
///
/// # Safety
///
/// The protocol is memory safety, not only correctness: the migration core relinks
/// `page->lru` of a page `isolate` gave away (`mm/migrate.c`), so an implementation must
/// return `true` from [`MovableOps::isolate`] only for a page it has taken off every list of its
/// own that uses `page->lru`, and must not touch the page's `lru` again until
/// [`MovableOps::putback`] or a successful [`MovableOps::migrate`] hands it back; on `Ok(())`
/// from `migrate` it must have stopped using `src` (which the core frees).
pub unsafe trait MovableOps: 'static {
    /// Takes `page` away from its owner for migration, or returns `false` if it cannot be.
    ///
    /// On `true` the page must be off every list of the owner that uses `page->lru`.
    fn isolate(page: &CandidatePage<'_>, mode: IsolateMode) -> bool;

    /// Moves the owner's use of `src` to `dst`.
    ///
    /// `Ok(())`: the owner uses `dst` now (with a reference of its own) and has let go of `src`,
    /// which the core frees. `Err(EAGAIN)`: try again later. Any other error: give up. On an
    /// error `src` stays isolated and comes back through [`MovableOps::putback`].
    fn migrate(dst: &TargetPage<'_>, src: &IsolatedPage<'_>, mode: MigrateMode) -> Result;

    /// Takes back a page whose migration failed or was abandoned.
    fn putback(page: &IsolatedPage<'_>);
}

/// The C callbacks and the `movable_operations` table of a [`MovableOps`] implementation.
struct Adapter<T: MovableOps>(PhantomData<T>);

impl<T: MovableOps> Adapter<T> {
    const VTABLE: bindings::movable_operations = bindings::movable_operations {
        isolate_page: Some(Self::isolate_page),
        migrate_page: Some(Self::migrate_page),
        putback_page: Some(Self::putback_page),
    };

    /// # Safety
    ///
    /// Called by `isolate_movable_ops_page()` only: `page` is a locked, referenced page of the
    /// registered type with `PG_movable_ops` that is not isolated.
    unsafe extern "C" fn isolate_page(page: *mut bindings::page, mode: c_uint) -> bool {
        // SAFETY: Per the safety requirements, for the duration of the call, which the borrow
        // does not outlive.
        let Some(page) = (unsafe { CandidatePage::from_raw(page) }) else {
            return false;
        };
        T::isolate(&page, IsolateMode(mode))
    }

    /// # Safety
    ///
    /// Called by `migrate_movable_ops_page()` only: `src` is a page this type isolated, `dst` a
    /// fresh page, both locked and referenced by the migration core.
    unsafe extern "C" fn migrate_page(
        dst: *mut bindings::page,
        src: *mut bindings::page,
        mode: bindings::migrate_mode,
    ) -> c_int {
        // SAFETY: Per the safety requirements, for the duration of the call.
        let dst = unsafe { TargetPage::from_raw(dst) };
        // SAFETY: As above.
        let src = unsafe { IsolatedPage::from_raw(src) };
        let (Some(dst), Some(src)) = (dst, src) else {
            // Nothing to do it with: a permanent failure, the page is put back.
            return EINVAL.to_errno();
        };
        let mode = match MigrateMode::from_raw(mode) {
            Ok(mode) => mode,
            Err(e) => return e.to_errno(),
        };
        match T::migrate(&dst, &src, mode) {
            // `MIGRATEPAGE_SUCCESS`.
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by `putback_movable_ops_page()` only: `page` is a page this type isolated, locked
    /// and referenced by the migration core.
    unsafe extern "C" fn putback_page(page: *mut bindings::page) {
        // SAFETY: Per the safety requirements, for the duration of the call.
        if let Some(page) = unsafe { IsolatedPage::from_raw(page) } {
            T::putback(&page);
        }
    }
}

/// `T` registered as the movable operations of a page type; unregistered on drop.
///
/// # Invariants
///
/// `Adapter::<T>::VTABLE` is registered with `set_movable_ops()` for `ty`.
pub struct Registration<T: MovableOps> {
    ty: PageType,
    _t: PhantomData<T>,
}

impl<T: MovableOps> Registration<T> {
    /// Registers `T` as the movable operations of pages of type `ty`.
    ///
    /// `EBUSY` if the type already has operations (one owner per type: with the balloon, the
    /// C balloon core and the Rust one exclude each other), `EINVAL` for a type the migration
    /// core does not dispatch on, `ENOSYS` without `CONFIG_MIGRATION`.
    ///
    /// # Safety
    ///
    /// When the registration is dropped, no page of type `ty` may have `PG_movable_ops` set and
    /// no isolation, migration or putback of such a page may be in progress: the migration core
    /// looks the operations up again at each step, and would find none.
    pub unsafe fn new(ty: PageType) -> Result<Self> {
        // SAFETY: The table is a `'static` constant (promoted). Its callbacks uphold the C
        // contract of `movable_operations`: the adapters convert the C arguments faithfully, and
        // `T`'s functions keep the isolation protocol, as `MovableOps` is an `unsafe trait` whose
        // implementers promise it.
        unsafe { set_movable_ops(&Adapter::<T>::VTABLE, ty) }?;
        // INVARIANT: registered just above.
        Ok(Self {
            ty,
            _t: PhantomData,
        })
    }

    /// The page type the operations are registered for.
    pub fn page_type(&self) -> PageType {
        self.ty
    }
}

impl<T: MovableOps> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: Unregistering (a NULL table) is what `set_movable_ops()` offers for it; no
        // page of the type has movable operations any more per the safety requirements of
        // `new`. It cannot fail for a type it accepted before.
        let _ = unsafe { set_movable_ops(core::ptr::null(), self.ty) };
    }
}

/// `set_movable_ops()`.
///
/// # Safety
///
/// `ops` must be NULL or a `'static` table whose callbacks follow the C contract.
#[cfg(CONFIG_MIGRATION)]
unsafe fn set_movable_ops(ops: *const bindings::movable_operations, ty: PageType) -> Result {
    // SAFETY: Per the safety requirements.
    to_result(unsafe { bindings::set_movable_ops(ops, ty as bindings::pagetype) })
}

/// Without `CONFIG_MIGRATION` nothing migrates, as the C stub says.
///
/// # Safety
///
/// None; `unsafe` to match the function it stands in for.
#[cfg(not(CONFIG_MIGRATION))]
unsafe fn set_movable_ops(_ops: *const bindings::movable_operations, _ty: PageType) -> Result {
    Err(ENOSYS)
}

#[kunit_tests(rust_kernel_mm_movable)]
mod tests {
    use super::*;

    #[test]
    fn migrate_mode_roundtrip() {
        for mode in [
            MigrateMode::Async,
            MigrateMode::SyncLight,
            MigrateMode::Sync,
        ] {
            assert_eq!(MigrateMode::from_raw(mode.as_raw()), Ok(mode));
        }
        assert!(!MigrateMode::Async.may_block());
        assert!(MigrateMode::SyncLight.may_block());
        assert_eq!(
            MigrateMode::from_raw(bindings::migrate_mode(1000)),
            Err(EINVAL)
        );
    }

    struct Never;

    // SAFETY: `isolate` never gives a page away.
    unsafe impl MovableOps for Never {
        fn isolate(_page: &CandidatePage<'_>, _mode: IsolateMode) -> bool {
            false
        }
        fn migrate(_dst: &TargetPage<'_>, _src: &IsolatedPage<'_>, _mode: MigrateMode) -> Result {
            Err(EAGAIN)
        }
        fn putback(_page: &IsolatedPage<'_>) {}
    }

    #[test]
    fn one_owner_per_page_type() {
        // A balloon core owns the offline type as soon as balloon migration is built.
        if cfg!(CONFIG_BALLOON_MIGRATION) {
            // SAFETY: It is refused, so nothing is registered and dropping nothing is harmless.
            let second = unsafe { Registration::<Never>::new(PageType::Offline) };
            assert_eq!(second.err(), Some(EBUSY));
        }
        if !cfg!(CONFIG_MIGRATION) {
            // SAFETY: Refused without migration, as above.
            let r = unsafe { Registration::<Never>::new(PageType::Offline) };
            assert_eq!(r.err(), Some(ENOSYS));
        }
    }
}
