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
//!
//! [`Binding`]: crate::binding::Binding
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

use crate::bindings;

mod device;
mod page;
#[cfg(CONFIG_KUNIT)]
mod tests;

pub use self::device::{BalloonDevInfo, BalloonMigrate, BalloonOom, BalloonReport};
pub use self::page::{BalloonBlock, BalloonPage, DeflatedPage, MigratingPage};
/// How hard a migration may try; shared with every owner of movable pages.
pub use crate::mm::movable::MigrateMode;
/// Free page blocks lent to a [`BalloonReport`] (see [`crate::page_reporting`]).
pub use crate::page_reporting::ReportedPages;

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
