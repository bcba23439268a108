// SPDX-License-Identifier: GPL-2.0

//! Batches of PFN requests: one inflate or deflate step sends several buffers at once.
//!
//! Some hosts (Firecracker, cloud-hypervisor) ignore a request of more than
//! [`VIRTIO_BALLOON_ARRAY_PFNS_MAX`] PFNs, so every buffer stays a [`PfnBuffer`] of at most 256.
//! What makes a step cheaper than the C driver's is that it fills several of them, queues them as
//! they fill, a few at a time, and waits once until the host has used all of them: the host works
//! while the guest fills, and there is one wakeup of the size work and one `actual` update per step
//! instead of per buffer.
//!
//! API summary (pure logic, no `unsafe`, no device):
//!
//! - [`MAX_BUFFERS_IN_FLIGHT`] (16): the most buffers one step fills; [`STEP_PFNS_MAX`] the most
//!   balloon pages one step covers.
//! - [`buffers_that_fit`]`(num_free)`: how many buffers can be queued now. A buffer is one
//!   descriptor (indirect descriptors are not negotiated).
//! - [`buffers_for`]`(balloon_pages, geometry)`: how many buffers that many balloon pages take.
//! - [`PfnBatch`]: owns the buffers. [`PfnBatch::start`]`(buffers)` begins a step that may fill
//!   that many; [`PfnBatch::push_page`]`(pfn)` appends a guest page to the first buffer with room
//!   (or returns [`BufferFull`]); [`PfnBatch::guest_page_room`], [`PfnBatch::len`] (balloon
//!   pages), [`PfnBatch::filled`] (buffers holding PFNs); [`PfnBatch::take`] hands a filled
//!   buffer over to the queue and [`PfnBatch::give_back`] takes it back once the host used it.
//!
//! Buffers are allocated once, when the batch is made: moving them between the batch and the
//! queue never allocates, so neither does a step.

use crate::pfn::{BufferFull, Geometry, PfnBuffer, VIRTIO_BALLOON_ARRAY_PFNS_MAX};
use kernel::{alloc::Flags, prelude::*, virtio::Endian};

/// The most request buffers one step fills and has in flight on a queue.
///
/// 16 buffers are 16 MiB of 4 KiB pages per step: enough that the per-step costs (kick,
/// interrupt, wakeup, `actual` update) no longer show, small enough that a step does not hold
/// back many allocated pages from the OOM notifier and stays well within the 128 descriptors of
/// the smallest balloon queues hosts create.
pub(crate) const MAX_BUFFERS_IN_FLIGHT: usize = 16;

/// The most balloon pages (4 KiB) one step inflates or deflates.
pub(crate) const STEP_PFNS_MAX: usize = MAX_BUFFERS_IN_FLIGHT * VIRTIO_BALLOON_ARRAY_PFNS_MAX;

/// How many buffers can be queued on a queue with `num_free` free descriptors, at most
/// [`MAX_BUFFERS_IN_FLIGHT`].
///
/// Each buffer is a single descriptor: the driver refuses `VIRTIO_RING_F_INDIRECT_DESC`, and a
/// [`PfnBuffer`] is one contiguous region.
pub(crate) fn buffers_that_fit(num_free: u32) -> usize {
    (num_free as usize).min(MAX_BUFFERS_IN_FLIGHT)
}

/// How many buffers it takes to send `balloon_pages` balloon PFNs, counted in whole guest pages of
/// `geometry` (a guest page is never split over two buffers).
pub(crate) fn buffers_for(balloon_pages: usize, geometry: Geometry) -> usize {
    let ppp = geometry.pages_per_page() as usize;
    let per_buffer = VIRTIO_BALLOON_ARRAY_PFNS_MAX / ppp;
    balloon_pages.div_ceil(ppp).div_ceil(per_buffer)
}

/// The request buffers of one queue pair, filled in order during a step.
///
/// # Invariants
///
/// `filled` and `spare` each have room for every buffer the batch owns, so moving a buffer
/// between them never allocates. Every buffer in `filled` but the last is full, and every buffer
/// in `filled` holds at least one guest page. `filled.len() <= limit`.
pub(crate) struct PfnBatch {
    geometry: Geometry,
    /// Buffers holding PFNs of the current step.
    filled: KVec<KBox<PfnBuffer>>,
    /// Empty buffers.
    spare: KVec<KBox<PfnBuffer>>,
    /// How many buffers the current step may fill.
    limit: usize,
}

impl PfnBatch {
    /// Allocates a batch of `buffers` (at least one) request buffers for pages of `geometry`, to
    /// a device of byte order `endian`.
    pub(crate) fn new(
        buffers: usize,
        geometry: Geometry,
        endian: Endian,
        flags: Flags,
    ) -> Result<Self> {
        if buffers == 0 {
            return Err(EINVAL);
        }
        let filled = KVec::with_capacity(buffers, flags)?;
        let mut spare = KVec::with_capacity(buffers, flags)?;
        for _ in 0..buffers {
            spare.push(KBox::new(PfnBuffer::new(geometry, endian), flags)?, flags)?;
        }
        // INVARIANT: both vectors have room for all `buffers`, and nothing is filled yet.
        Ok(Self {
            geometry,
            filled,
            spare,
            limit: 0,
        })
    }

    /// Starts a step that may fill up to `buffers` buffers (fewer if the batch owns fewer, or if
    /// some are still with the host), dropping whatever the last step left unsent.
    pub(crate) fn start(&mut self, buffers: usize) {
        while let Some(mut buf) = self.filled.pop() {
            buf.clear();
            // Cannot fail: `spare` has room for every buffer (type invariant).
            let _ = self.spare.push_within_capacity(buf);
        }
        // INVARIANT: nothing is filled, and zero is within any limit.
        self.limit = buffers.min(self.spare.len());
    }

    /// How many more guest pages this step can hold.
    pub(crate) fn guest_page_room(&self) -> usize {
        let per_buffer = VIRTIO_BALLOON_ARRAY_PFNS_MAX / self.geometry.pages_per_page() as usize;
        let used = self.len() / self.geometry.pages_per_page() as usize;
        (self.limit * per_buffer).saturating_sub(used)
    }

    /// Appends the balloon PFNs of guest page `pfn` to the current buffer, or to the next one when
    /// it is full.
    ///
    /// Returns [`BufferFull`], leaving the batch unchanged, once the step's buffers are all full.
    pub(crate) fn push_page(&mut self, pfn: usize) -> Result<(), BufferFull> {
        let need_buffer = self.filled.last().is_none_or(|b| b.is_full());
        if need_buffer {
            if self.filled.len() >= self.limit {
                return Err(BufferFull);
            }
            let Some(mut buf) = self.spare.pop() else {
                return Err(BufferFull);
            };
            buf.clear();
            if let Err(e) = buf.push_page(pfn) {
                // Cannot happen: an empty buffer has room for a guest page (`Geometry`).
                let _ = self.spare.push_within_capacity(buf);
                return Err(e);
            }
            // INVARIANT: the previous last buffer was full, this one holds a page, and the limit
            // was checked above. Cannot fail: `filled` has room for every buffer.
            if let Err(e) = self.filled.push_within_capacity(buf) {
                let mut buf = e.0;
                buf.clear();
                let _ = self.spare.push_within_capacity(buf);
                return Err(BufferFull);
            }
            return Ok(());
        }
        match self.filled.last_mut() {
            Some(buf) => buf.push_page(pfn),
            None => Err(BufferFull),
        }
    }

    /// Number of balloon PFNs (4 KiB balloon pages) in the step's buffers.
    pub(crate) fn len(&self) -> usize {
        self.filled.iter().map(|b| b.len()).sum()
    }

    /// Number of empty buffers, ready to be filled.
    pub(crate) fn spare(&self) -> usize {
        self.spare.len()
    }

    /// Number of buffers holding PFNs, i.e. still to be sent.
    pub(crate) fn filled(&self) -> usize {
        self.filled.len()
    }

    /// Takes a filled buffer out of the batch, to hand it to the device.
    ///
    /// Give it back with [`PfnBatch::give_back`] once the device has used it.
    pub(crate) fn take(&mut self) -> Option<KBox<PfnBuffer>> {
        // INVARIANT: removing the last buffer keeps all others full.
        self.filled.pop()
    }

    /// Takes back a buffer the device has used (or could not take).
    pub(crate) fn give_back(&mut self, mut buf: KBox<PfnBuffer>) {
        buf.clear();
        // Cannot fail for buffers of this batch: `spare` has room for every buffer. Any other is
        // just freed.
        let _ = self.spare.push_within_capacity(buf);
    }

    /// The `index`-th balloon PFN of the step, counting through the filled buffers in order.
    // Only the KUnit tests read it back.
    #[cfg(CONFIG_KUNIT = "y")]
    pub(crate) fn get(&self, index: usize) -> Option<u32> {
        let per_buffer = VIRTIO_BALLOON_ARRAY_PFNS_MAX;
        self.filled
            .get(index / per_buffer)
            .and_then(|b| b.get(index % per_buffer))
    }
}

#[kernel::macros::kunit_tests(rballoon_batch)]
mod tests {
    use super::*;

    const G4K: Geometry = Geometry::G4K;
    const G64K: Geometry = Geometry::G64K;

    #[test]
    fn buffers_fit_the_free_descriptors() {
        assert_eq!(buffers_that_fit(0), 0);
        assert_eq!(buffers_that_fit(3), 3);
        assert_eq!(buffers_that_fit(16), 16);
        // QEMU's balloon queues have 128 descriptors, Firecracker's 256: capped per step.
        assert_eq!(buffers_that_fit(128), MAX_BUFFERS_IN_FLIGHT);
        assert_eq!(buffers_that_fit(u32::MAX), MAX_BUFFERS_IN_FLIGHT);
        assert_eq!(STEP_PFNS_MAX, 16 * 256);
    }

    #[test]
    fn buffers_needed_for_a_step() {
        assert_eq!(buffers_for(0, G4K), 0);
        assert_eq!(buffers_for(1, G4K), 1);
        assert_eq!(buffers_for(256, G4K), 1);
        assert_eq!(buffers_for(257, G4K), 2);
        assert_eq!(buffers_for(STEP_PFNS_MAX, G4K), MAX_BUFFERS_IN_FLIGHT);
        // 64K guest pages: 16 per buffer, and a partial guest page counts whole.
        assert_eq!(buffers_for(16 * 16, G64K), 1);
        assert_eq!(buffers_for(16 * 16 + 1, G64K), 2);
    }

    #[test]
    fn pages_spill_into_the_next_buffer() -> Result {
        let mut batch = PfnBatch::new(4, G4K, Endian::GUEST, GFP_KERNEL)?;
        batch.start(3);
        assert_eq!(batch.guest_page_room(), 3 * 256);
        for pfn in 0..600 {
            assert_eq!(batch.push_page(1000 + pfn), Ok(()));
        }
        assert_eq!(batch.len(), 600);
        assert_eq!(batch.filled(), 3);
        assert_eq!(batch.guest_page_room(), 168);
        // In order through the buffers, across the 256 boundary.
        assert_eq!(batch.get(0), Some(1000));
        assert_eq!(batch.get(255), Some(1255));
        assert_eq!(batch.get(256), Some(1256));
        assert_eq!(batch.get(599), Some(1599));
        assert_eq!(batch.get(600), None);
        // The step stops at its limit, not at what the batch owns.
        for pfn in 600..768 {
            assert_eq!(batch.push_page(pfn), Ok(()));
        }
        assert_eq!(batch.push_page(768), Err(BufferFull));
        assert_eq!(batch.len(), 768);
        assert_eq!(batch.guest_page_room(), 0);
        Ok(())
    }

    #[test]
    fn every_buffer_stays_within_256_pfns() -> Result {
        let mut batch = PfnBatch::new(MAX_BUFFERS_IN_FLIGHT, G64K, Endian::GUEST, GFP_KERNEL)?;
        batch.start(MAX_BUFFERS_IN_FLIGHT);
        let mut pages = 0;
        while batch.push_page(pages).is_ok() {
            pages += 1;
        }
        // 16 guest pages of 64K (256 balloon PFNs) per buffer.
        assert_eq!(pages, 16 * MAX_BUFFERS_IN_FLIGHT);
        assert_eq!(batch.len(), STEP_PFNS_MAX);
        let mut seen = 0;
        while let Some(buf) = batch.take() {
            assert!(buf.len() <= VIRTIO_BALLOON_ARRAY_PFNS_MAX);
            assert_eq!(buf.len() % 16, 0);
            seen += buf.len();
            batch.give_back(buf);
        }
        assert_eq!(seen, STEP_PFNS_MAX);
        assert_eq!(batch.len(), 0);
        Ok(())
    }

    #[test]
    fn buffers_with_the_host_are_not_reused() -> Result {
        let mut batch = PfnBatch::new(2, G4K, Endian::GUEST, GFP_KERNEL)?;
        batch.start(2);
        for pfn in 0..300 {
            assert_eq!(batch.push_page(pfn), Ok(()));
        }
        let first = batch.take().ok_or(EINVAL)?;
        assert_eq!(first.len(), 300 - 256);
        // One buffer is with the host: the next step can fill only the other.
        batch.start(2);
        assert_eq!(batch.len(), 0);
        assert_eq!(batch.guest_page_room(), 256);
        batch.give_back(first);
        batch.start(2);
        assert_eq!(batch.guest_page_room(), 512);
        // A step that leaves its buffers unsent gets them back empty at the next start.
        assert_eq!(batch.push_page(7), Ok(()));
        batch.start(1);
        assert_eq!(batch.filled(), 0);
        assert_eq!(batch.guest_page_room(), 256);
        Ok(())
    }

    #[test]
    fn no_buffers_no_step() -> Result {
        assert_eq!(
            PfnBatch::new(0, G4K, Endian::GUEST, GFP_KERNEL).err(),
            Some(EINVAL)
        );
        let mut batch = PfnBatch::new(1, G4K, Endian::GUEST, GFP_KERNEL)?;
        batch.start(0);
        assert_eq!(batch.guest_page_room(), 0);
        assert_eq!(batch.push_page(1), Err(BufferFull));
        assert_eq!(batch.filled(), 0);
        Ok(())
    }
}
