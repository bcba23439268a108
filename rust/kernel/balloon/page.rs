// SPDX-License-Identifier: GPL-2.0

//! The pages of a balloon: allocated for it, split from a free block, taken out of it, or being
//! migrated.

use crate::{bindings, prelude::*};
use core::{marker::PhantomData, mem::ManuallyDrop, ptr::NonNull};

/// Returns the page frame number of `page`.
///
/// # Safety
///
/// `page` must point to a valid `struct page`.
pub(super) unsafe fn page_pfn(page: NonNull<bindings::page>) -> usize {
    // SAFETY: `page` is valid per the safety requirements; `page_to_pfn()` only computes the
    // page's index in the memory map.
    unsafe { bindings::balloon_page_to_pfn(page.as_ptr()) }
}

/// A page allocated for the balloon but not in it yet.
///
/// Made by [`BalloonDevInfo::alloc_page`], consumed by [`BalloonDevInfo::enqueue`]. Dropping it
/// frees the page, which is what an inflation that gives up (say the host cannot be told) wants.
///
/// [`BalloonDevInfo::alloc_page`]: super::BalloonDevInfo::alloc_page
/// [`BalloonDevInfo::enqueue`]: super::BalloonDevInfo::enqueue
///
/// # Invariants
///
/// `self.0` points to an order-0 page returned by `balloon_page_alloc()` or split from a
/// [`BalloonBlock`] (directly, or back from a balloon through [`DeflatedPage::keep`]) that this
/// object holds the owner reference to (a compaction scanner may hold a transient one of its
/// own), that is in no balloon and whose `lru` field is unused.
pub struct BalloonPage(pub(super) NonNull<bindings::page>);

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

    pub(super) fn into_raw(self) -> NonNull<bindings::page> {
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
    pub(super) fn smaller_free(order: u32) -> (c_ulong, c_ulong) {
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
pub struct DeflatedPage(pub(super) NonNull<bindings::page>);

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
/// [`BalloonMigrate::migrate`]: super::BalloonMigrate::migrate
///
/// # Invariants
///
/// `self.0` points to a page that is locked and kept alive by the migration core for `'a`.
pub struct MigratingPage<'a>(
    pub(super) NonNull<bindings::page>,
    PhantomData<&'a bindings::page>,
);

impl MigratingPage<'_> {
    /// # Safety
    ///
    /// `page` must point to a valid page that stays valid for the lifetime of the result.
    pub(super) unsafe fn from_raw(page: *mut bindings::page) -> Option<Self> {
        // INVARIANT: valid for the lifetime per the safety requirements.
        NonNull::new(page).map(|p| Self(p, PhantomData))
    }

    /// The page frame number of the page.
    pub fn pfn(&self) -> usize {
        // SAFETY: By the type invariant, `self.0` is a valid page.
        unsafe { page_pfn(self.0) }
    }
}
