// SPDX-License-Identifier: GPL-2.0

//! The memory statistics the balloon reports to the host on its stats virtqueue.
//!
//! The payload is an array of packed 10-byte `struct virtio_balloon_stat { __virtio16 tag;
//! __virtio64 val; }` entries: little-endian for a virtio 1.0 device, the guest's byte order for a
//! legacy one (C: `cpu_to_virtio16/64()`; QEMU reads them with `virtio_tswap16/64()`). Which
//! tags are sent, and in which order, is fixed for a given kernel build and is the C driver's
//! (`update_balloon_vm_stats()` then `update_balloon_stats()`):
//!
//! | # | tag | value |
//! |---|-----|-------|
//! | 0 | `SWAP_IN` | bytes swapped in (`PSWPIN`) |
//! | 1 | `SWAP_OUT` | bytes swapped out (`PSWPOUT`) |
//! | 2 | `MAJFLT` | major faults |
//! | 3 | `MINFLT` | faults |
//! | 4 | `OOM_KILL` | OOM kills |
//! | 5 | `ALLOC_STALL` | allocation stalls, all zones |
//! | 6 | `ASYNC_SCAN` | bytes scanned by kswapd |
//! | 7 | `DIRECT_SCAN` | bytes scanned by direct reclaim |
//! | 8 | `ASYNC_RECLAIM` | bytes reclaimed by kswapd |
//! | 9 | `DIRECT_RECLAIM` | bytes reclaimed by direct reclaim |
//! | 10 | `HTLB_PGALLOC` | hugetlb buddy allocations (`CONFIG_HUGETLB_PAGE` only) |
//! | 11 | `HTLB_PGFAIL` | hugetlb buddy allocation failures (`CONFIG_HUGETLB_PAGE` only) |
//! | 12 | `MEMFREE` | free bytes |
//! | 13 | `MEMTOT` | total bytes |
//! | 14 | `AVAIL` | available bytes (`MemAvailable`) |
//! | 15 | `CACHES` | file pages in bytes |
//!
//! Entries 0-11 are only sent with `CONFIG_VM_EVENT_COUNTERS`.
//!
//! API summary (pure encoding, no `unsafe`; the values come from
//! [`kernel::mm::vmstat::MemStats::gather`]):
//!
//! - the 16 tags `VIRTIO_BALLOON_S_*` and [`VIRTIO_BALLOON_S_NR`], [`STAT_ENTRY_SIZE`] (10).
//! - [`StatsBuffer`]: `new(endian)`, `fill(&stats, page_shift)` (re-encodes all entries, returns
//!   how many), `is_empty()`, `as_bytes()` (the payload to put in the virtqueue), `entry(i)`.

use kernel::{mm::vmstat::MemStats, virtio::Endian};

/// Amount of memory swapped in (bytes).
pub(crate) const VIRTIO_BALLOON_S_SWAP_IN: u16 = 0;
/// Amount of memory swapped out (bytes).
pub(crate) const VIRTIO_BALLOON_S_SWAP_OUT: u16 = 1;
/// Number of major faults.
pub(crate) const VIRTIO_BALLOON_S_MAJFLT: u16 = 2;
/// Number of minor faults.
pub(crate) const VIRTIO_BALLOON_S_MINFLT: u16 = 3;
/// Total amount of free memory (bytes).
pub(crate) const VIRTIO_BALLOON_S_MEMFREE: u16 = 4;
/// Total amount of memory (bytes).
pub(crate) const VIRTIO_BALLOON_S_MEMTOT: u16 = 5;
/// Available memory as in /proc (bytes).
pub(crate) const VIRTIO_BALLOON_S_AVAIL: u16 = 6;
/// Disk caches (bytes).
pub(crate) const VIRTIO_BALLOON_S_CACHES: u16 = 7;
/// Hugetlb page allocations.
pub(crate) const VIRTIO_BALLOON_S_HTLB_PGALLOC: u16 = 8;
/// Hugetlb page allocation failures.
pub(crate) const VIRTIO_BALLOON_S_HTLB_PGFAIL: u16 = 9;
/// OOM killer invocations.
pub(crate) const VIRTIO_BALLOON_S_OOM_KILL: u16 = 10;
/// Stall count of memory allocation.
pub(crate) const VIRTIO_BALLOON_S_ALLOC_STALL: u16 = 11;
/// Amount of memory scanned asynchronously (bytes).
pub(crate) const VIRTIO_BALLOON_S_ASYNC_SCAN: u16 = 12;
/// Amount of memory scanned directly (bytes).
pub(crate) const VIRTIO_BALLOON_S_DIRECT_SCAN: u16 = 13;
/// Amount of memory reclaimed asynchronously (bytes).
pub(crate) const VIRTIO_BALLOON_S_ASYNC_RECLAIM: u16 = 14;
/// Amount of memory reclaimed directly (bytes).
pub(crate) const VIRTIO_BALLOON_S_DIRECT_RECLAIM: u16 = 15;
/// Number of defined tags, and the most entries one report holds.
pub(crate) const VIRTIO_BALLOON_S_NR: usize = 16;

/// Size of one packed `struct virtio_balloon_stat`: `__virtio16 tag` then `__virtio64 val`.
pub(crate) const STAT_ENTRY_SIZE: usize = 10;

/// A stats report, encoded as the device reads it.
///
/// # Invariants
///
/// `len <= VIRTIO_BALLOON_S_NR` and `bytes[..len * STAT_ENTRY_SIZE]` holds `len` entries encoded
/// in byte order `endian`.
pub(crate) struct StatsBuffer {
    endian: Endian,
    len: usize,
    bytes: [u8; VIRTIO_BALLOON_S_NR * STAT_ENTRY_SIZE],
}

impl StatsBuffer {
    /// An empty report, for a device of byte order `endian`.
    pub(crate) const fn new(endian: Endian) -> Self {
        // INVARIANT: empty.
        Self {
            endian,
            len: 0,
            bytes: [0; VIRTIO_BALLOON_S_NR * STAT_ENTRY_SIZE],
        }
    }

    /// Whether the report holds no entry.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The report payload: the entries `fill()` encoded, packed.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len * STAT_ENTRY_SIZE]
    }

    /// The tag and value of entry `index`, decoded back from the payload.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) fn entry(&self, index: usize) -> Option<(u16, u64)> {
        if index >= self.len {
            return None;
        }
        let at = index * STAT_ENTRY_SIZE;
        let mut tag = [0u8; 2];
        let mut val = [0u8; 8];
        tag.copy_from_slice(&self.bytes[at..at + 2]);
        val.copy_from_slice(&self.bytes[at + 2..at + STAT_ENTRY_SIZE]);
        Some((self.endian.u16_from(tag), self.endian.u64_from(val)))
    }

    fn push(&mut self, tag: u16, val: u64) {
        // Cannot fail: `fill()` pushes at most 16 entries after clearing, one per tag. Checked
        // anyway so that a mistake drops an entry instead of writing out of bounds.
        if self.len >= VIRTIO_BALLOON_S_NR {
            return;
        }
        let at = self.len * STAT_ENTRY_SIZE;
        self.bytes[at..at + 2].copy_from_slice(&self.endian.u16_bytes(tag));
        self.bytes[at + 2..at + STAT_ENTRY_SIZE].copy_from_slice(&self.endian.u64_bytes(val));
        // INVARIANT: in bounds by the check above, and the entry was just written.
        self.len += 1;
    }

    /// Re-encodes the whole report from `stats`, page counts converted to bytes with
    /// `page_shift` (the kernel's `PAGE_SHIFT`; a parameter so that tests can use any).
    ///
    /// Returns the number of entries, as the C `update_balloon_stats()` does.
    pub(crate) fn fill(&mut self, stats: &MemStats, page_shift: u32) -> usize {
        // `pages_to_bytes()` in C: a u64 shift, wrapping like C's on absurd counts.
        let bytes = |pages: u64| pages.wrapping_shl(page_shift);
        self.len = 0;
        if let Some(vm) = &stats.vm_events {
            self.push(VIRTIO_BALLOON_S_SWAP_IN, bytes(vm.swap_in_pages));
            self.push(VIRTIO_BALLOON_S_SWAP_OUT, bytes(vm.swap_out_pages));
            self.push(VIRTIO_BALLOON_S_MAJFLT, vm.major_faults);
            self.push(VIRTIO_BALLOON_S_MINFLT, vm.minor_faults);
            self.push(VIRTIO_BALLOON_S_OOM_KILL, vm.oom_kills);
            self.push(VIRTIO_BALLOON_S_ALLOC_STALL, vm.alloc_stalls);
            self.push(VIRTIO_BALLOON_S_ASYNC_SCAN, bytes(vm.scan_kswapd_pages));
            self.push(VIRTIO_BALLOON_S_DIRECT_SCAN, bytes(vm.scan_direct_pages));
            self.push(VIRTIO_BALLOON_S_ASYNC_RECLAIM, bytes(vm.steal_kswapd_pages));
            self.push(
                VIRTIO_BALLOON_S_DIRECT_RECLAIM,
                bytes(vm.steal_direct_pages),
            );
            if let Some(htlb) = &vm.hugetlb {
                self.push(VIRTIO_BALLOON_S_HTLB_PGALLOC, htlb.allocs);
                self.push(VIRTIO_BALLOON_S_HTLB_PGFAIL, htlb.alloc_failures);
            }
        }
        self.push(VIRTIO_BALLOON_S_MEMFREE, bytes(stats.free_pages));
        self.push(VIRTIO_BALLOON_S_MEMTOT, bytes(stats.total_pages));
        self.push(VIRTIO_BALLOON_S_AVAIL, bytes(stats.available_pages));
        self.push(VIRTIO_BALLOON_S_CACHES, bytes(stats.file_pages));
        self.len
    }
}

#[kernel::macros::kunit_tests(rballoon_stats)]
mod tests {
    use super::*;
    use kernel::{
        bindings,
        mm::vmstat::{HugetlbStats, VmEventStats},
    };

    fn sample(vm: bool, hugetlb: bool) -> MemStats {
        MemStats {
            vm_events: vm.then(|| VmEventStats {
                swap_in_pages: 1,
                swap_out_pages: 2,
                major_faults: 3,
                minor_faults: 4,
                oom_kills: 5,
                alloc_stalls: 6,
                scan_kswapd_pages: 7,
                scan_direct_pages: 8,
                steal_kswapd_pages: 9,
                steal_direct_pages: 10,
                hugetlb: hugetlb.then_some(HugetlbStats {
                    allocs: 11,
                    alloc_failures: 12,
                }),
            }),
            free_pages: 100,
            total_pages: 200,
            available_pages: 150,
            file_pages: 50,
        }
    }

    #[test]
    fn full_report_order_and_values() {
        let mut buf = StatsBuffer::new(Endian::Little);
        assert_eq!(buf.fill(&sample(true, true), 12), VIRTIO_BALLOON_S_NR);
        let expected: [(u16, u64); VIRTIO_BALLOON_S_NR] = [
            (VIRTIO_BALLOON_S_SWAP_IN, 1 << 12),
            (VIRTIO_BALLOON_S_SWAP_OUT, 2 << 12),
            (VIRTIO_BALLOON_S_MAJFLT, 3),
            (VIRTIO_BALLOON_S_MINFLT, 4),
            (VIRTIO_BALLOON_S_OOM_KILL, 5),
            (VIRTIO_BALLOON_S_ALLOC_STALL, 6),
            (VIRTIO_BALLOON_S_ASYNC_SCAN, 7 << 12),
            (VIRTIO_BALLOON_S_DIRECT_SCAN, 8 << 12),
            (VIRTIO_BALLOON_S_ASYNC_RECLAIM, 9 << 12),
            (VIRTIO_BALLOON_S_DIRECT_RECLAIM, 10 << 12),
            (VIRTIO_BALLOON_S_HTLB_PGALLOC, 11),
            (VIRTIO_BALLOON_S_HTLB_PGFAIL, 12),
            (VIRTIO_BALLOON_S_MEMFREE, 100 << 12),
            (VIRTIO_BALLOON_S_MEMTOT, 200 << 12),
            (VIRTIO_BALLOON_S_AVAIL, 150 << 12),
            (VIRTIO_BALLOON_S_CACHES, 50 << 12),
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(buf.entry(i), Some(*want));
        }
        assert_eq!(buf.entry(VIRTIO_BALLOON_S_NR), None);
        // Every tag appears exactly once.
        let mut seen = [false; VIRTIO_BALLOON_S_NR];
        for (tag, _) in expected {
            assert!(!seen[tag as usize]);
            seen[tag as usize] = true;
        }
    }

    #[test]
    fn packed_little_endian_layout() {
        let mut buf = StatsBuffer::new(Endian::Little);
        buf.fill(&sample(true, true), 12);
        let bytes = buf.as_bytes();
        assert_eq!(bytes.len(), VIRTIO_BALLOON_S_NR * STAT_ENTRY_SIZE);
        assert_eq!(bytes.len(), 160);
        // Entry 0: tag 0 (SWAP_IN), value 4096 = 0x1000, no padding between tag and value.
        assert_eq!(&bytes[..10], &[0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0]);
        // Entry 2 starts at byte 20: tag 2 (MAJFLT), value 3.
        assert_eq!(&bytes[20..30], &[2, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        // Last entry at byte 150: tag 7 (CACHES), value 50 << 12 = 0x32000.
        assert_eq!(&bytes[150..160], &[7, 0, 0x00, 0x20, 0x03, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn packed_big_endian_layout_for_a_legacy_device_on_a_big_endian_guest() {
        let mut buf = StatsBuffer::new(Endian::Big);
        buf.fill(&sample(true, true), 12);
        let bytes = buf.as_bytes();
        assert_eq!(bytes.len(), 160);
        // Entry 0: tag 0 (SWAP_IN), value 0x1000, most significant byte first.
        assert_eq!(&bytes[..10], &[0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00]);
        // Entry 2: tag 2 (MAJFLT), value 3.
        assert_eq!(&bytes[20..30], &[0, 2, 0, 0, 0, 0, 0, 0, 0, 3]);
        // Last entry: tag 7 (CACHES), value 0x32000.
        assert_eq!(&bytes[150..160], &[0, 7, 0, 0, 0, 0, 0, 0x03, 0x20, 0x00]);
        assert_eq!(buf.entry(15), Some((VIRTIO_BALLOON_S_CACHES, 50 << 12)));
    }

    #[test]
    fn tags_are_the_uapi_headers() {
        // The protocol's numbers, from include/uapi/linux/virtio_balloon.h, not from this file.
        for (ours, uapi) in [
            (VIRTIO_BALLOON_S_SWAP_IN, bindings::VIRTIO_BALLOON_S_SWAP_IN),
            (
                VIRTIO_BALLOON_S_SWAP_OUT,
                bindings::VIRTIO_BALLOON_S_SWAP_OUT,
            ),
            (VIRTIO_BALLOON_S_MAJFLT, bindings::VIRTIO_BALLOON_S_MAJFLT),
            (VIRTIO_BALLOON_S_MINFLT, bindings::VIRTIO_BALLOON_S_MINFLT),
            (VIRTIO_BALLOON_S_MEMFREE, bindings::VIRTIO_BALLOON_S_MEMFREE),
            (VIRTIO_BALLOON_S_MEMTOT, bindings::VIRTIO_BALLOON_S_MEMTOT),
            (VIRTIO_BALLOON_S_AVAIL, bindings::VIRTIO_BALLOON_S_AVAIL),
            (VIRTIO_BALLOON_S_CACHES, bindings::VIRTIO_BALLOON_S_CACHES),
            (
                VIRTIO_BALLOON_S_HTLB_PGALLOC,
                bindings::VIRTIO_BALLOON_S_HTLB_PGALLOC,
            ),
            (
                VIRTIO_BALLOON_S_HTLB_PGFAIL,
                bindings::VIRTIO_BALLOON_S_HTLB_PGFAIL,
            ),
            (
                VIRTIO_BALLOON_S_OOM_KILL,
                bindings::VIRTIO_BALLOON_S_OOM_KILL,
            ),
            (
                VIRTIO_BALLOON_S_ALLOC_STALL,
                bindings::VIRTIO_BALLOON_S_ALLOC_STALL,
            ),
            (
                VIRTIO_BALLOON_S_ASYNC_SCAN,
                bindings::VIRTIO_BALLOON_S_ASYNC_SCAN,
            ),
            (
                VIRTIO_BALLOON_S_DIRECT_SCAN,
                bindings::VIRTIO_BALLOON_S_DIRECT_SCAN,
            ),
            (
                VIRTIO_BALLOON_S_ASYNC_RECLAIM,
                bindings::VIRTIO_BALLOON_S_ASYNC_RECLAIM,
            ),
            (
                VIRTIO_BALLOON_S_DIRECT_RECLAIM,
                bindings::VIRTIO_BALLOON_S_DIRECT_RECLAIM,
            ),
        ] {
            assert_eq!(u32::from(ours), uapi);
        }
        assert_eq!(VIRTIO_BALLOON_S_NR as u32, bindings::VIRTIO_BALLOON_S_NR);
    }

    #[test]
    fn pages_are_converted_with_the_page_size() {
        let mut buf = StatsBuffer::new(Endian::Little);
        // 64K pages: free memory is 100 * 64 KiB.
        buf.fill(&sample(true, true), 16);
        assert_eq!(buf.entry(12), Some((VIRTIO_BALLOON_S_MEMFREE, 100 << 16)));
        // Event counts are not pages and are not converted.
        assert_eq!(buf.entry(2), Some((VIRTIO_BALLOON_S_MAJFLT, 3)));
        // Large values use all 64 bits.
        let mut big = sample(false, false);
        big.total_pages = 1 << 40;
        buf.fill(&big, 12);
        assert_eq!(buf.entry(1), Some((VIRTIO_BALLOON_S_MEMTOT, 1 << 52)));
        assert_eq!(&buf.as_bytes()[10..20], &[5, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
    }

    #[test]
    fn subsets_follow_the_configuration() {
        let mut buf = StatsBuffer::new(Endian::Little);
        // Without CONFIG_HUGETLB_PAGE: the two hugetlb entries are left out, order kept.
        assert_eq!(buf.fill(&sample(true, false), 12), 14);
        assert_eq!(
            buf.entry(9).map(|e| e.0),
            Some(VIRTIO_BALLOON_S_DIRECT_RECLAIM)
        );
        assert_eq!(buf.entry(10).map(|e| e.0), Some(VIRTIO_BALLOON_S_MEMFREE));
        assert_eq!(buf.as_bytes().len(), 140);
        // Without CONFIG_VM_EVENT_COUNTERS: only the four memory entries.
        assert_eq!(buf.fill(&sample(false, false), 12), 4);
        assert_eq!(buf.entry(0).map(|e| e.0), Some(VIRTIO_BALLOON_S_MEMFREE));
        assert_eq!(buf.entry(3).map(|e| e.0), Some(VIRTIO_BALLOON_S_CACHES));
        assert_eq!(buf.entry(4), None);
        // Refilling replaces the report instead of appending to it.
        assert_eq!(buf.fill(&sample(true, true), 12), 16);
        assert!(!buf.is_empty());
    }
}
