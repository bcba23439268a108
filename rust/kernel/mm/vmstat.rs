// SPDX-License-Identifier: GPL-2.0

//! The kernel's memory statistics: vm event counters, node counters and `si_meminfo()`.
//!
//! [`MemStats::gather`] takes one snapshot of the values a guest reports about its memory: vm
//! event counters, reclaim scan/steal node counters, `si_meminfo()`, `si_mem_available()` and the
//! file page count, read from the same sources as the C virtio balloon's
//! `update_balloon_vm_stats()` and `update_balloon_stats()` (the 16 `VIRTIO_BALLOON_S_*` tags).
//! Values are raw: page counts in pages and event counts as counted; encoding them for a device
//! is the driver's business.
//!
//! C headers: [`include/linux/vmstat.h`](srctree/include/linux/vmstat.h),
//! [`include/linux/mm.h`](srctree/include/linux/mm.h)
//!
//! API summary: [`MemStats`] { `vm_events: Option<`[`VmEventStats`]`>` (None without
//! `CONFIG_VM_EVENT_COUNTERS`), `free_pages`, `total_pages`, `available_pages`, `file_pages` },
//! [`VmEventStats`] { `swap_in_pages`, `swap_out_pages`, `major_faults`, `minor_faults`,
//! `oom_kills`, `alloc_stalls`, `scan_kswapd_pages`, `scan_direct_pages`, `steal_kswapd_pages`,
//! `steal_direct_pages`, `hugetlb: Option<`[`HugetlbStats`]`>` (None without
//! `CONFIG_HUGETLB_PAGE`) }, [`MemStats::gather`].
//!
//! # Examples
//!
//! ```
//! use kernel::mm::vmstat::MemStats;
//!
//! let stats = MemStats::gather();
//! assert!(stats.total_pages > 0);
//! assert!(stats.free_pages <= stats.total_pages);
//! ```

use crate::{bindings, prelude::*};
use core::mem::MaybeUninit;

/// Hugetlb allocation counters (`CONFIG_HUGETLB_PAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HugetlbStats {
    /// Huge pages allocated from the buddy allocator (`HTLB_BUDDY_PGALLOC`).
    pub allocs: u64,
    /// Failed huge page allocations from the buddy allocator (`HTLB_BUDDY_PGALLOC_FAIL`).
    pub alloc_failures: u64,
}

/// Counters from the vm events and reclaim statistics (`CONFIG_VM_EVENT_COUNTERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmEventStats {
    /// Pages swapped in (`PSWPIN`).
    pub swap_in_pages: u64,
    /// Pages swapped out (`PSWPOUT`).
    pub swap_out_pages: u64,
    /// Major page faults (`PGMAJFAULT`).
    pub major_faults: u64,
    /// Page faults (`PGFAULT`).
    pub minor_faults: u64,
    /// OOM killer invocations (`OOM_KILL`).
    pub oom_kills: u64,
    /// Direct reclaim stalls of allocations, summed over all zones (`ALLOCSTALL_*`).
    pub alloc_stalls: u64,
    /// Pages scanned by kswapd (node counter `PGSCAN_KSWAPD`).
    pub scan_kswapd_pages: u64,
    /// Pages scanned by direct reclaim (node counter `PGSCAN_DIRECT`).
    pub scan_direct_pages: u64,
    /// Pages reclaimed by kswapd (node counter `PGSTEAL_KSWAPD`).
    pub steal_kswapd_pages: u64,
    /// Pages reclaimed by direct reclaim (node counter `PGSTEAL_DIRECT`).
    pub steal_direct_pages: u64,
    /// Hugetlb counters, `None` without `CONFIG_HUGETLB_PAGE`.
    pub hugetlb: Option<HugetlbStats>,
}

/// A snapshot of the memory statistics a guest reports to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemStats {
    /// Event and reclaim counters, `None` without `CONFIG_VM_EVENT_COUNTERS`.
    pub vm_events: Option<VmEventStats>,
    /// Free pages (`sysinfo.freeram`).
    pub free_pages: u64,
    /// Total usable pages (`sysinfo.totalram`).
    pub total_pages: u64,
    /// Pages available for new allocations without swapping (`MemAvailable`).
    pub available_pages: u64,
    /// Page cache pages (node counter `NR_FILE_PAGES`).
    pub file_pages: u64,
}

/// Reads a global node counter.
fn node_page_state(item: bindings::node_stat_item) -> u64 {
    // SAFETY: `item` is a valid `enum node_stat_item`; the helper only reads a global counter.
    unsafe { bindings::global_node_page_state(item) as u64 }
}

#[cfg(CONFIG_VM_EVENT_COUNTERS)]
fn vm_event_stats() -> Option<VmEventStats> {
    // The same on-stack snapshot of every counter as the C driver takes.
    let mut events = [0 as crate::ffi::c_ulong; bindings::vm_event_item_NR_VM_EVENT_ITEMS as usize];
    // SAFETY: `events` has room for the `NR_VM_EVENT_ITEMS` counters that
    // `bindings::all_vm_events()` writes.
    unsafe { bindings::all_vm_events(events.as_mut_ptr()) };
    let event = |item: bindings::vm_event_item| events[item as usize] as u64;

    // `ALLOCSTALL_*` has one counter per zone type, in zone order.
    let alloc_stalls = (0..bindings::MAX_NR_ZONES)
        .map(|zid| {
            event(bindings::vm_event_item_ALLOCSTALL_NORMAL - bindings::zone_type_ZONE_NORMAL + zid)
        })
        .sum();

    #[cfg(CONFIG_HUGETLB_PAGE)]
    let hugetlb = Some(HugetlbStats {
        allocs: event(bindings::vm_event_item_HTLB_BUDDY_PGALLOC),
        alloc_failures: event(bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL),
    });
    #[cfg(not(CONFIG_HUGETLB_PAGE))]
    let hugetlb = None;

    Some(VmEventStats {
        swap_in_pages: event(bindings::vm_event_item_PSWPIN),
        swap_out_pages: event(bindings::vm_event_item_PSWPOUT),
        major_faults: event(bindings::vm_event_item_PGMAJFAULT),
        minor_faults: event(bindings::vm_event_item_PGFAULT),
        oom_kills: event(bindings::vm_event_item_OOM_KILL),
        alloc_stalls,
        scan_kswapd_pages: node_page_state(bindings::node_stat_item_PGSCAN_KSWAPD),
        scan_direct_pages: node_page_state(bindings::node_stat_item_PGSCAN_DIRECT),
        steal_kswapd_pages: node_page_state(bindings::node_stat_item_PGSTEAL_KSWAPD),
        steal_direct_pages: node_page_state(bindings::node_stat_item_PGSTEAL_DIRECT),
        hugetlb,
    })
}

#[cfg(not(CONFIG_VM_EVENT_COUNTERS))]
fn vm_event_stats() -> Option<VmEventStats> {
    None
}

impl MemStats {
    /// Reads the current values. May be called from any sleepable context.
    pub fn gather() -> Self {
        // Zeroed rather than uninitialised: `si_meminfo()` fills in only the memory fields.
        let mut info = MaybeUninit::<bindings::sysinfo>::zeroed();
        // SAFETY: `info` is valid for writes of a `struct sysinfo`.
        unsafe { bindings::si_meminfo(info.as_mut_ptr()) };
        // SAFETY: `struct sysinfo` only has integer and byte array fields, for which all bits
        // zero, and whatever `si_meminfo()` stored over them, are valid.
        let info = unsafe { info.assume_init() };
        // SAFETY: No preconditions; it only reads counters.
        let available = unsafe { bindings::si_mem_available() };
        Self {
            vm_events: vm_event_stats(),
            free_pages: info.freeram as u64,
            total_pages: info.totalram as u64,
            // Never negative (the C function clamps it), but its type is signed.
            available_pages: available.max(0) as u64,
            file_pages: node_page_state(bindings::node_stat_item_NR_FILE_PAGES),
        }
    }
}

#[kunit_tests(rust_kernel_mm_vmstat)]
mod tests {
    use super::*;

    #[test]
    fn gather_reads_sane_values() {
        let s = MemStats::gather();
        assert!(s.total_pages > 0);
        assert!(s.free_pages <= s.total_pages);
        assert!(s.available_pages <= s.total_pages);
        assert_eq!(s.vm_events.is_some(), cfg!(CONFIG_VM_EVENT_COUNTERS));
        if let Some(vm) = s.vm_events {
            assert_eq!(vm.hugetlb.is_some(), cfg!(CONFIG_HUGETLB_PAGE));
        }
        // Counters only grow: a later snapshot is never below an earlier one.
        let later = MemStats::gather();
        if let (Some(a), Some(b)) = (s.vm_events, later.vm_events) {
            assert!(b.minor_faults >= a.minor_faults);
            assert!(b.alloc_stalls >= a.alloc_stalls);
        }
    }

    /// Counts `n` `item` events, as the kernel does where they happen.
    #[cfg(CONFIG_VM_EVENT_COUNTERS)]
    fn count(item: bindings::vm_event_item, n: u64) -> Result {
        // The helper counts on this CPU without disabling preemption itself: a spinlock does.
        let lock = KBox::pin_init(crate::new_spinlock!(()), GFP_KERNEL)?;
        let _guard = lock.lock();
        for _ in 0..n {
            // SAFETY: `item` is a valid vm event, counted with preemption disabled.
            unsafe { bindings::movable_count_vm_event(item) };
        }
        Ok(())
    }

    #[cfg(CONFIG_VM_EVENT_COUNTERS)]
    #[test]
    fn each_value_is_read_from_its_own_counter() -> Result {
        // Bump each event the balloon reports by a different amount: every value must move by
        // its own event's amount, so that a value read from another counter shows.
        let events = [
            (bindings::vm_event_item_PSWPIN, 1u64),
            (bindings::vm_event_item_PSWPOUT, 2),
            (bindings::vm_event_item_PGMAJFAULT, 3),
            (bindings::vm_event_item_OOM_KILL, 5),
            (bindings::vm_event_item_ALLOCSTALL_NORMAL, 6),
        ];
        let before = MemStats::gather().vm_events.unwrap_or_default();
        for &(item, n) in &events {
            count(item, n)?;
        }
        #[cfg(CONFIG_HUGETLB_PAGE)]
        {
            count(bindings::vm_event_item_HTLB_BUDDY_PGALLOC, 1)?;
            count(bindings::vm_event_item_HTLB_BUDDY_PGALLOC_FAIL, 7)?;
        }
        let after = MemStats::gather().vm_events.unwrap_or_default();
        // Nothing in a KUnit kernel swaps, faults on user memory or kills meanwhile.
        assert_eq!(after.swap_in_pages - before.swap_in_pages, 1);
        assert_eq!(after.swap_out_pages - before.swap_out_pages, 2);
        assert_eq!(after.major_faults - before.major_faults, 3);
        assert_eq!(after.oom_kills - before.oom_kills, 5);
        assert_eq!(after.alloc_stalls - before.alloc_stalls, 6);
        if let (Some(a), Some(b)) = (after.hugetlb, before.hugetlb) {
            assert_eq!(a.allocs - b.allocs, 1);
            assert_eq!(a.alloc_failures - b.alloc_failures, 7);
        }
        Ok(())
    }
}
