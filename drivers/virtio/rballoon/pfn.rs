// SPDX-License-Identifier: GPL-2.0

//! Balloon page frame numbers: how a guest page is named to the host.
//!
//! The virtio balloon protocol always counts in 4 KiB "balloon pages", whatever the guest's
//! page size is. A guest page therefore stands for [`PAGES_PER_PAGE`] consecutive balloon PFNs,
//! and every inflate/deflate request carries an array of at most
//! [`VIRTIO_BALLOON_ARRAY_PFNS_MAX`] of them, as `set_page_pfns()` and `page_to_balloon_pfn()`
//! of the C driver build it.
//!
//! API summary (pure logic, no `unsafe`, no kernel state):
//!
//! - [`VIRTIO_BALLOON_PFN_SHIFT`] (12), [`VIRTIO_BALLOON_ARRAY_PFNS_MAX`] (256),
//!   [`PAGES_PER_PAGE`] (`PAGE_SIZE >> 12` of this kernel).
//! - [`Geometry`]: the guest page size seen from the balloon. [`Geometry::KERNEL`] is this
//!   kernel's; [`Geometry::new`] takes any page shift so that 16K and 64K page layouts can be
//!   tested on a 4K kernel. `pages_per_page()`, `balloon_pfn(pfn)`, `balloon_pfns(pfn)`,
//!   `report_order()` (the smallest free block to report: 2 MiB with 64 KiB pages).
//! - [`PfnBuffer`]: one request worth of `__virtio32` balloon PFNs (at most 256), in the
//!   device's byte order ([`Endian`]). `push_page(pfn)` appends the `pages_per_page()` PFNs of a
//!   guest page or returns [`BufferFull`]; `is_full()`, `len()` (in balloon pages),
//!   `guest_pages()`, `as_bytes()` (the bytes to put in the virtqueue), `get(i)`, `clear()`.
//!
//! The PFN array is little-endian for a virtio 1.0 device and in the guest's byte order for a
//! legacy one (C: `cpu_to_virtio32()`): a legacy balloon on a big-endian guest (s390, ppc32) that
//! got little-endian PFNs would discard the wrong pages.

use kernel::{page::PAGE_SHIFT, virtio::Endian};

/// The balloon protocol's page size, as a shift: balloon PFNs always count 4 KiB pages.
pub(crate) const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;

/// The largest number of balloon PFNs the driver sends in one inflate or deflate request.
///
/// The same array size as the C driver's, so that the host sees the same request sizes.
pub(crate) const VIRTIO_BALLOON_ARRAY_PFNS_MAX: usize = 256;

/// The free blocks page reporting reports with large pages: 2 MiB, a host's huge page.
const REPORT_BLOCK_SHIFT: u32 = 21;

/// Number of balloon pages (4 KiB) one guest page stands for on this kernel.
pub(crate) const PAGES_PER_PAGE: u32 = Geometry::KERNEL.pages_per_page();

/// The buffer is full: the guest page does not fit in the space left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BufferFull;

/// The guest page size, seen from the balloon protocol.
///
/// # Invariants
///
/// `page_shift >= VIRTIO_BALLOON_PFN_SHIFT` and one guest page fits in one request, i.e.
/// `1 << (page_shift - VIRTIO_BALLOON_PFN_SHIFT) <= VIRTIO_BALLOON_ARRAY_PFNS_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    page_shift: u32,
}

impl Geometry {
    /// This kernel's page size.
    ///
    /// Evaluated at compile time: a kernel whose pages are smaller than 4 KiB or larger than one
    /// request (1 MiB) fails to build, as the C driver's `BUILD_BUG_ON()`s make it.
    pub(crate) const KERNEL: Self = match Self::new(PAGE_SHIFT as u32) {
        Some(g) => g,
        None => panic!("PAGE_SIZE cannot be expressed in virtio balloon pages"),
    };

    /// Guest pages of 4 KiB, 16 KiB and 64 KiB: the geometries the KUnit suites try.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const G4K: Self = Self::for_tests(12);
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const G16K: Self = Self::for_tests(14);
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const G64K: Self = Self::for_tests(16);

    #[cfg(CONFIG_KUNIT = "y")]
    const fn for_tests(page_shift: u32) -> Self {
        match Self::new(page_shift) {
            Some(g) => g,
            None => panic!("not a valid test geometry"),
        }
    }

    /// Makes the geometry of guest pages of `1 << page_shift` bytes.
    ///
    /// Returns `None` if such a page cannot be described to the host: smaller than a balloon
    /// page, or larger than one PFN array.
    pub(crate) const fn new(page_shift: u32) -> Option<Self> {
        if page_shift < VIRTIO_BALLOON_PFN_SHIFT {
            return None;
        }
        let delta = page_shift - VIRTIO_BALLOON_PFN_SHIFT;
        // Checked on the shift first so that absurd shifts cannot overflow `1 << delta`.
        if delta >= usize::BITS || (1usize << delta) > VIRTIO_BALLOON_ARRAY_PFNS_MAX {
            return None;
        }
        // INVARIANT: both bounds were checked just above.
        Some(Self { page_shift })
    }

    /// The guest page shift this geometry describes.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const fn page_shift(self) -> u32 {
        self.page_shift
    }

    /// Number of balloon pages (4 KiB) per guest page: `PAGE_SIZE >> VIRTIO_BALLOON_PFN_SHIFT`.
    pub(crate) const fn pages_per_page(self) -> u32 {
        1 << (self.page_shift - VIRTIO_BALLOON_PFN_SHIFT)
    }

    /// The first balloon PFN of the guest page with frame number `pfn`.
    ///
    /// Truncated to 32 bits exactly as the C driver's `page_to_balloon_pfn()` does: the protocol
    /// has no room for more, and matching the C driver keeps both drivers' requests identical.
    pub(crate) const fn balloon_pfn(self, pfn: usize) -> u32 {
        // Wrapping on purpose, see above: C multiplies in `unsigned long` and returns `u32`.
        pfn.wrapping_mul(self.pages_per_page() as usize) as u32
    }

    /// The smallest free block free page reporting tells the host about, as a page order:
    /// 2 MiB with 64 KiB pages (order 5), as the C driver sets it on arm64, where the core's
    /// default, `pageblock_order`, is 512 MiB and almost no free memory would ever be reported;
    /// `None`, the default, with smaller pages (2 MiB with 4 KiB pages, 32 MiB with 16 KiB).
    pub(crate) const fn report_order(self) -> Option<u32> {
        if self.page_shift >= 16 {
            Some(REPORT_BLOCK_SHIFT - self.page_shift)
        } else {
            None
        }
    }

    /// The [`Self::pages_per_page`] consecutive balloon PFNs of the guest page `pfn`, in the
    /// order they are sent to the host (the first one points at the start of the page).
    pub(crate) fn balloon_pfns(self, pfn: usize) -> impl Iterator<Item = u32> {
        let first = self.balloon_pfn(pfn);
        (0..self.pages_per_page()).map(move |i| first.wrapping_add(i))
    }
}

/// The PFN array of one inflate or deflate request.
///
/// Holds whole guest pages only: [`PfnBuffer::push_page`] adds all the balloon PFNs of a page or
/// none of them, so the host never sees part of a guest page.
///
/// # Invariants
///
/// `len <= VIRTIO_BALLOON_ARRAY_PFNS_MAX`, `len` is a multiple of `geometry.pages_per_page()`, and
/// `bytes[..4 * len]` holds `len` balloon PFNs, `u32`s in byte order `endian`.
pub(crate) struct PfnBuffer {
    geometry: Geometry,
    endian: Endian,
    len: usize,
    bytes: [u8; 4 * VIRTIO_BALLOON_ARRAY_PFNS_MAX],
}

impl PfnBuffer {
    /// An empty buffer for pages of `geometry`, to a device of byte order `endian`.
    pub(crate) const fn new(geometry: Geometry, endian: Endian) -> Self {
        // INVARIANT: empty.
        Self {
            geometry,
            endian,
            len: 0,
            bytes: [0; 4 * VIRTIO_BALLOON_ARRAY_PFNS_MAX],
        }
    }

    /// Empties the buffer, to start the next request.
    pub(crate) fn clear(&mut self) {
        // INVARIANT: zero is a multiple of anything and in bounds.
        self.len = 0;
    }

    /// Number of balloon PFNs (4 KiB balloon pages) in the buffer.
    pub(crate) const fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no PFN.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of guest pages in the buffer.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const fn guest_pages(&self) -> usize {
        self.len / self.geometry.pages_per_page() as usize
    }

    /// Whether another guest page would not fit.
    pub(crate) const fn is_full(&self) -> bool {
        self.len + self.geometry.pages_per_page() as usize > VIRTIO_BALLOON_ARRAY_PFNS_MAX
    }

    /// Appends the balloon PFNs of the guest page with frame number `pfn`.
    ///
    /// Returns [`BufferFull`], leaving the buffer unchanged, if the page does not fit: the caller
    /// then sends the buffer and starts the next one.
    pub(crate) fn push_page(&mut self, pfn: usize) -> Result<(), BufferFull> {
        if self.is_full() {
            return Err(BufferFull);
        }
        let start = 4 * self.len;
        for (i, balloon_pfn) in self.geometry.balloon_pfns(pfn).enumerate() {
            let at = start + 4 * i;
            self.bytes[at..at + 4].copy_from_slice(&self.endian.u32_bytes(balloon_pfn));
        }
        // INVARIANT: `is_full()` was false, so a whole page more is still in bounds.
        self.len += self.geometry.pages_per_page() as usize;
        Ok(())
    }

    /// The `index`-th balloon PFN in the buffer, if there is one.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) fn get(&self, index: usize) -> Option<u32> {
        if index >= self.len {
            return None;
        }
        let at = 4 * index;
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[at..at + 4]);
        Some(self.endian.u32_from(b))
    }

    /// The request payload: `len()` `__virtio32` balloon PFNs.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..4 * self.len]
    }
}

#[kernel::macros::kunit_tests(rballoon_pfn)]
mod tests {
    use super::*;

    const G4K: Geometry = Geometry::G4K;
    const G16K: Geometry = Geometry::G16K;
    const G64K: Geometry = Geometry::G64K;

    #[test]
    fn geometry_bounds() {
        // Smaller than a balloon page: the C driver refuses to build (BUILD_BUG_ON).
        assert_eq!(Geometry::new(11), None);
        // 1 MiB pages are exactly one request of 256 balloon PFNs; 2 MiB ones would not fit.
        assert_eq!(Geometry::new(20).map(|g| g.pages_per_page()), Some(256));
        assert_eq!(Geometry::new(21), None);
        assert_eq!(Geometry::new(200), None);
        assert_eq!(Geometry::KERNEL.page_shift(), PAGE_SHIFT as u32);
        assert_eq!(
            PAGES_PER_PAGE as usize,
            kernel::page::PAGE_SIZE >> VIRTIO_BALLOON_PFN_SHIFT
        );
    }

    #[test]
    fn pages_per_page() {
        assert_eq!(G4K.pages_per_page(), 1);
        assert_eq!(G16K.pages_per_page(), 4);
        assert_eq!(G64K.pages_per_page(), 16);
    }

    #[test]
    fn balloon_pfns_per_page_size() {
        // 4K: the guest PFN is the balloon PFN.
        assert_eq!(G4K.balloon_pfn(0x12345), 0x12345);
        assert!(G4K.balloon_pfns(7).eq([7u32]));
        // 16K: guest page 3 covers balloon pages 12..16.
        assert_eq!(G16K.balloon_pfn(3), 12);
        assert!(G16K.balloon_pfns(3).eq([12u32, 13, 14, 15]));
        // 64K: guest page 2 covers balloon pages 32..48.
        assert_eq!(G64K.balloon_pfn(2), 32);
        assert!(G64K.balloon_pfns(2).eq(32u32..48));
    }

    #[test]
    fn reports_2m_blocks_with_64k_pages() {
        // The C driver's order 5 under CONFIG_ARM64_64K_PAGES: 2 MiB.
        assert_eq!(G64K.report_order(), Some(5));
        assert_eq!(1usize << (5 + G64K.page_shift()), 2 << 20);
        // Smaller pages keep the core's default, pageblock_order, as in C.
        assert_eq!(G4K.report_order(), None);
        assert_eq!(G16K.report_order(), None);
        // 1 MiB pages (the largest a request can name): two of them.
        assert_eq!(Geometry::new(20).and_then(|g| g.report_order()), Some(1));
    }

    #[test]
    fn balloon_pfn_truncates_like_c() {
        // C: `return pfn * VIRTIO_BALLOON_PAGES_PER_PAGE;` into a u32.
        let pfn = (1usize << 31) + 5;
        assert_eq!(G4K.balloon_pfn(pfn), (1u32 << 31) + 5);
        // 16K: (2^31 + 5) * 4 = 2^33 + 20 -> 20 once truncated to 32 bits.
        assert_eq!(G16K.balloon_pfn(pfn), 20);
    }

    #[test]
    fn buffer_encodes_little_endian() {
        let mut buf = PfnBuffer::new(G4K, Endian::Little);
        assert!(buf.is_empty());
        assert_eq!(buf.push_page(0x0102_0304), Ok(()));
        assert_eq!(buf.push_page(0xa0b0c), Ok(()));
        assert_eq!(buf.len(), 2);
        assert_eq!(buf.guest_pages(), 2);
        assert_eq!(
            buf.as_bytes(),
            &[0x04, 0x03, 0x02, 0x01, 0x0c, 0x0b, 0x0a, 0x00]
        );
        assert_eq!(buf.get(1), Some(0xa0b0c));
        assert_eq!(buf.get(2), None);
    }

    #[test]
    fn buffer_encodes_big_endian_for_a_legacy_device_on_a_big_endian_guest() {
        let mut buf = PfnBuffer::new(G4K, Endian::Big);
        assert_eq!(buf.push_page(0x0102_0304), Ok(()));
        assert_eq!(buf.as_bytes(), &[0x01, 0x02, 0x03, 0x04]);
        assert_eq!(buf.get(0), Some(0x0102_0304));
        // 64K pages: each of the 16 balloon PFNs in the same order.
        let mut buf = PfnBuffer::new(G64K, Endian::Big);
        assert_eq!(buf.push_page(1), Ok(()));
        assert_eq!(&buf.as_bytes()[..8], &[0, 0, 0, 16, 0, 0, 0, 17]);
        assert_eq!(buf.get(15), Some(31));
    }

    #[test]
    fn buffer_holds_whole_64k_pages() {
        let mut buf = PfnBuffer::new(G64K, Endian::Little);
        assert_eq!(buf.push_page(1), Ok(()));
        assert_eq!(buf.len(), 16);
        assert_eq!(buf.guest_pages(), 1);
        assert_eq!(buf.as_bytes().len(), 64);
        for i in 0..16 {
            assert_eq!(buf.get(i), Some(16 + i as u32));
        }
        // The first balloon PFN points at the start of the page, little-endian.
        assert_eq!(&buf.as_bytes()[..8], &[16, 0, 0, 0, 17, 0, 0, 0]);
    }

    #[test]
    fn buffer_splits_at_256_pfns() {
        for (geometry, pages) in [(G4K, 256usize), (G16K, 64), (G64K, 16)] {
            let mut buf = PfnBuffer::new(geometry, Endian::GUEST);
            for pfn in 0..pages {
                assert!(!buf.is_full());
                assert_eq!(buf.push_page(pfn), Ok(()));
            }
            assert!(buf.is_full());
            assert_eq!(buf.len(), VIRTIO_BALLOON_ARRAY_PFNS_MAX);
            assert_eq!(buf.guest_pages(), pages);
            assert_eq!(buf.as_bytes().len(), 4 * VIRTIO_BALLOON_ARRAY_PFNS_MAX);
            // The page that does not fit is refused whole and the buffer stays as it was.
            assert_eq!(buf.push_page(pages), Err(BufferFull));
            assert_eq!(buf.len(), VIRTIO_BALLOON_ARRAY_PFNS_MAX);
            // The last PFN is that of the last balloon page of the last guest page.
            assert_eq!(
                buf.get(VIRTIO_BALLOON_ARRAY_PFNS_MAX - 1),
                Some(VIRTIO_BALLOON_ARRAY_PFNS_MAX as u32 - 1)
            );
            buf.clear();
            assert!(buf.is_empty());
            assert_eq!(buf.push_page(pages), Ok(()));
            assert_eq!(buf.get(0), Some(geometry.balloon_pfn(pages)));
        }
    }
}
