// SPDX-License-Identifier: GPL-2.0

//! Blocks of free pages a driver takes from the page allocator to hand to its device by address.
//!
//! A virtio balloon hints free memory to the host by allocating free blocks and queueing them: the
//! host learns which guest memory it need not migrate, and the guest keeps the blocks until the
//! host is done with them. The driver never looks into such memory, so a [`PageBlock`] gives no
//! access to its contents: it only owns the allocation, and [`Virtqueue::add_inbuf_pages`] lends
//! it to the device.
//!
//! [`Virtqueue::add_inbuf_pages`]: super::Virtqueue::add_inbuf_pages

use crate::{bindings, ffi::c_uint};
use core::ptr::NonNull;

/// A block of `2^order` physically contiguous pages, owned, and freed when dropped.
///
/// Its contents are never accessed through it (they may be anything, and a device may write
/// them while it holds the block), which is what makes lending it to a device safe.
///
/// # Invariants
///
/// `page` is the first page of a block of `2^order` pages allocated with `alloc_pages()` at that
/// order, in the kernel's linear mapping, owned by this object.
pub struct PageBlock {
    page: NonNull<bindings::page>,
    order: u32,
}

// SAFETY: The block is plain memory nobody else refers to; it may be freed from any thread.
unsafe impl Send for PageBlock {}
// SAFETY: `&PageBlock` only reads `order` and the page pointer.
unsafe impl Sync for PageBlock {}

impl PageBlock {
    /// The largest order the page allocator hands out (`MAX_PAGE_ORDER`).
    pub const MAX_ORDER: u32 = bindings::MAX_PAGE_ORDER;

    /// Takes a free block of `2^order` pages if the page allocator has one at hand.
    ///
    /// It neither reclaims nor compacts memory, dips into no emergency reserves and warns about
    /// nothing when it fails (`__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC`, as the C balloon
    /// takes its hint blocks): taking free memory must never cost memory. Never sleeps.
    ///
    /// Returns `None` when no such block is free, or if `order` exceeds [`PageBlock::MAX_ORDER`].
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::virtio::PageBlock;
    ///
    /// if let Some(block) = PageBlock::alloc_if_free(2) {
    ///     assert_eq!(block.pages(), 4);
    ///     assert_eq!(block.bytes(), 4 * kernel::page::PAGE_SIZE);
    /// }
    /// assert!(PageBlock::alloc_if_free(PageBlock::MAX_ORDER + 1).is_none());
    /// ```
    pub fn alloc_if_free(order: u32) -> Option<Self> {
        if order > Self::MAX_ORDER {
            return None;
        }
        // SAFETY: The helper only calls `alloc_pages()` with flags that neither sleep nor reclaim,
        // and `order` is within the allocator's range.
        let page = unsafe { bindings::virtio_alloc_free_page_block(order as c_uint) };
        // INVARIANT: A non-NULL result is a block of that order, owned by us; without
        // `__GFP_HIGHMEM` it is in the linear mapping.
        NonNull::new(page).map(|page| Self { page, order })
    }

    /// The block's order.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// How many pages the block has.
    pub fn pages(&self) -> usize {
        1 << self.order
    }

    /// The block's size in bytes.
    pub fn bytes(&self) -> usize {
        crate::page::PAGE_SIZE << self.order
    }

    /// The first page of the block.
    pub(crate) fn as_raw(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        // SAFETY: By the type invariants we own the block, allocated at this order.
        unsafe { bindings::__free_pages(self.page.as_ptr(), self.order) };
    }
}

#[macros::kunit_tests(rust_kernel_virtio_page_block)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_order() {
        // Order 0 is free on any machine that runs the tests.
        if let Some(b) = PageBlock::alloc_if_free(0) {
            assert_eq!((b.order(), b.pages()), (0, 1));
            assert_eq!(b.bytes(), crate::page::PAGE_SIZE);
        }
        if let Some(b) = PageBlock::alloc_if_free(3) {
            assert_eq!((b.order(), b.pages()), (3, 8));
            assert_eq!(b.bytes(), 8 * crate::page::PAGE_SIZE);
        }
    }

    #[test]
    fn orders_beyond_the_allocator_are_refused() {
        assert!(PageBlock::alloc_if_free(PageBlock::MAX_ORDER + 1).is_none());
        assert!(PageBlock::alloc_if_free(u32::MAX).is_none());
    }
}
