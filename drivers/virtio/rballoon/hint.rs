// SPDX-License-Identifier: GPL-2.0

//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`): the command id protocol, as pure logic.
//!
//! During a live migration the host asks the guest which of its memory is free, so that it need
//! not send it. It does so with a command id in the configuration field `free_page_hint_cmd_id`:
//!
//! - a new id (QEMU counts up from `0x8000_0000`): hint now. The driver sends the id on the free
//!   page queue, then free blocks of `2^MAX_PAGE_ORDER` pages as long as it can allocate them and
//!   the id stays the same, then [`CMD_ID_STOP`]. It keeps the blocks, so that the guest does not
//!   use (and dirty) them while the host skips them.
//! - [`CMD_ID_STOP`] (0): stop hinting; keep the blocks.
//! - [`CMD_ID_DONE`] (1): the migration is over; give every block back to the page allocator.
//!
//! The driver reads the field again only after a configuration change, as the C driver does
//! (`config_read_bitmap`): [`CmdIds::received`] caches it.
//!
//! Everything here is the C driver's `report_free_page_func()`, `send_free_pages()`,
//! `get_free_page_and_send()` and `shrink_free_pages()` minus the I/O, which is in
//! `hint_queue.rs`.

use kernel::bindings;

/// The host asks the driver to stop hinting (`VIRTIO_BALLOON_CMD_ID_STOP`).
pub(crate) const CMD_ID_STOP: u32 = bindings::VIRTIO_BALLOON_CMD_ID_STOP;

/// The host is done with the hints; the blocks go back to the guest (`VIRTIO_BALLOON_CMD_ID_DONE`).
pub(crate) const CMD_ID_DONE: u32 = bindings::VIRTIO_BALLOON_CMD_ID_DONE;

/// Ring slots kept free for the command id that ends a round: a block is only queued while more
/// than this many slots are free (C: "There is always 1 entry reserved for the cmd id to use").
pub(crate) const CMD_ID_SLOTS: u32 = 1;

/// What the hint work does when it runs (the C `report_free_page_func()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing: the host said stop, or this id was hinted already.
    Idle,
    /// A round for this new command id: send it, then blocks, then [`CMD_ID_STOP`].
    Hint(u32),
    /// The host is done: every block goes back to the page allocator.
    ReturnAll,
}

/// The command ids as the driver sees them.
///
/// The C driver's `cmd_id_received_cache` and `cmd_id_active`, with its `config_read_bitmap` bit
/// passed in as `changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CmdIds {
    /// The last id read from the configuration.
    received: u32,
    /// The id of the last round started.
    active: u32,
}

impl CmdIds {
    /// Nothing received, nothing hinted.
    pub(crate) const fn new() -> Self {
        Self {
            received: CMD_ID_STOP,
            active: CMD_ID_STOP,
        }
    }

    /// The latest id from the host (the C `virtio_balloon_cmd_id_received()`).
    ///
    /// `read` reads the configuration field; it is called only if the configuration `changed`
    /// since the last call. If it fails (`None`), the cached id stays.
    pub(crate) fn received(&mut self, changed: bool, read: impl FnOnce() -> Option<u32>) -> u32 {
        if changed {
            if let Some(id) = read() {
                self.received = id;
            }
        }
        self.received
    }

    /// What to do about the id last received.
    pub(crate) fn action(&self) -> Action {
        match self.received {
            CMD_ID_DONE => Action::ReturnAll,
            CMD_ID_STOP => Action::Idle,
            id if id == self.active => Action::Idle,
            id => Action::Hint(id),
        }
    }

    /// A round for `id` starts: its id is sent to the host.
    pub(crate) fn start(&mut self, id: u32) {
        self.active = id;
    }

    /// Whether the current round goes on (the C `send_free_pages()` loop condition): the host has
    /// not sent a stop, done or new id since it started.
    pub(crate) fn keep_hinting(&self) -> bool {
        self.received == self.active && !matches!(self.active, CMD_ID_STOP | CMD_ID_DONE)
    }

    /// The id of the last round started.
    pub(crate) fn active(&self) -> u32 {
        self.active
    }
}

/// Whether a block may be queued when the free page queue has `num_free` free slots: one slot
/// stays for the stop id that ends the round.
pub(crate) const fn room_for_block(num_free: u32) -> bool {
    num_free > CMD_ID_SLOTS
}

/// Bytes of blocks on the free page queue that the host has not given back, at most (rounded
/// down to whole blocks, at least one).
///
/// The C driver queues blocks without bound. A guest that takes blocks faster than the host
/// reads them (a TCG guest against QEMU's iothread) then queues all its free memory at once;
/// where a queued block belongs to the queue until the host gives it back (a device behind a
/// DMA mapping, see `hint_queue.rs`) the shrinker cannot free it, and the next allocation finds
/// nothing to reclaim and runs the OOM killer. In bytes, not blocks, because a block is 4 MiB
/// with 4 KiB pages but 512 MiB with arm64's 64 KiB pages (`MAX_PAGE_ORDER` 13).
pub(crate) const LEND_WINDOW_BYTES: usize = 32 << 20;

/// The window in blocks of `block_bytes` bytes: [`LEND_WINDOW_BYTES`], at least one block.
pub(crate) const fn lend_window(block_bytes: usize) -> usize {
    if block_bytes == 0 || LEND_WINDOW_BYTES / block_bytes == 0 {
        1
    } else {
        LEND_WINDOW_BYTES / block_bytes
    }
}

/// Whether another block of `block_bytes` may be queued while `out` blocks are with the host.
pub(crate) const fn may_lend(out: usize, block_bytes: usize) -> bool {
    out < lend_window(block_bytes)
}

/// The smallest number of blocks of `block_pages` pages that covers `pages` pages: what the
/// shrinker frees when asked for `pages` (the C `shrink_free_pages()` rounds up).
pub(crate) const fn blocks_covering(pages: usize, block_pages: usize) -> usize {
    if block_pages == 0 {
        return 0;
    }
    pages.div_ceil(block_pages)
}

#[kernel::macros::kunit_tests(rballoon_hint)]
mod tests {
    use super::*;

    /// QEMU's first command id.
    const FIRST: u32 = 0x8000_0000;

    /// What a configuration read would return if one happened without a change: the tests
    /// see it come back if the cache was not used.
    const UNEXPECTED: u32 = 0xdead_beef;

    fn never() -> Option<u32> {
        Some(UNEXPECTED)
    }

    #[test]
    fn nothing_happens_before_the_host_asks() {
        let mut ids = CmdIds::new();
        assert_eq!(ids.received(false, never), CMD_ID_STOP);
        assert_eq!(ids.action(), Action::Idle);
        assert!(!ids.keep_hinting());
    }

    #[test]
    fn a_new_id_starts_a_round_once() {
        let mut ids = CmdIds::new();
        assert_eq!(ids.received(true, || Some(FIRST)), FIRST);
        assert_eq!(ids.action(), Action::Hint(FIRST));
        ids.start(FIRST);
        assert_eq!(ids.active(), FIRST);
        assert!(ids.keep_hinting());
        // Without a configuration change the cached id is used, and the round goes on.
        assert_eq!(ids.received(false, never), FIRST);
        assert!(ids.keep_hinting());
        // Another change (a new balloon size, say) with the same id: no second round.
        assert_eq!(ids.received(true, || Some(FIRST)), FIRST);
        assert_eq!(ids.action(), Action::Idle);
    }

    #[test]
    fn stop_ends_the_round_and_keeps_the_blocks() {
        let mut ids = CmdIds::new();
        ids.received(true, || Some(FIRST));
        ids.start(FIRST);
        ids.received(true, || Some(CMD_ID_STOP));
        assert!(!ids.keep_hinting());
        assert_eq!(ids.action(), Action::Idle);
    }

    #[test]
    fn a_newer_id_ends_the_round_and_starts_the_next() {
        let mut ids = CmdIds::new();
        ids.received(true, || Some(FIRST));
        ids.start(FIRST);
        ids.received(true, || Some(FIRST + 1));
        assert!(!ids.keep_hinting());
        assert_eq!(ids.action(), Action::Hint(FIRST + 1));
        ids.start(FIRST + 1);
        assert!(ids.keep_hinting());
    }

    #[test]
    fn done_returns_everything_and_a_later_migration_hints_again() {
        let mut ids = CmdIds::new();
        ids.received(true, || Some(FIRST));
        ids.start(FIRST);
        ids.received(true, || Some(CMD_ID_STOP));
        assert_eq!(ids.received(true, || Some(CMD_ID_DONE)), CMD_ID_DONE);
        assert_eq!(ids.action(), Action::ReturnAll);
        assert!(!ids.keep_hinting());
        // Until the next change the driver sees DONE again: returning is idempotent.
        assert_eq!(ids.received(false, never), CMD_ID_DONE);
        assert_eq!(ids.action(), Action::ReturnAll);
        ids.received(true, || Some(FIRST + 1));
        assert_eq!(ids.action(), Action::Hint(FIRST + 1));
    }

    #[test]
    fn done_in_the_middle_of_a_round_ends_it() {
        let mut ids = CmdIds::new();
        ids.received(true, || Some(FIRST));
        ids.start(FIRST);
        ids.received(true, || Some(CMD_ID_DONE));
        assert!(!ids.keep_hinting());
        assert_eq!(ids.action(), Action::ReturnAll);
    }

    #[test]
    fn a_failed_read_keeps_the_cached_id() {
        let mut ids = CmdIds::new();
        ids.received(true, || Some(FIRST));
        ids.start(FIRST);
        assert_eq!(ids.received(true, || None), FIRST);
        assert!(ids.keep_hinting());
    }

    #[test]
    fn the_ids_wrap_as_qemu_counts() {
        let mut ids = CmdIds::new();
        ids.received(true, || Some(u32::MAX));
        ids.start(u32::MAX);
        // QEMU goes back to its first id after u32::MAX.
        ids.received(true, || Some(FIRST));
        assert_eq!(ids.action(), Action::Hint(FIRST));
    }

    #[test]
    fn one_slot_stays_for_the_stop_id() {
        assert!(!room_for_block(0));
        assert!(!room_for_block(1));
        assert!(room_for_block(2));
        assert!(room_for_block(1024));
    }

    #[test]
    fn the_host_holds_at_most_the_window() {
        const MIB: usize = 1 << 20;
        // 4 KiB pages: 4 MiB blocks, 8 of them.
        assert!(may_lend(0, 4 * MIB));
        assert!(may_lend(7, 4 * MIB));
        assert!(!may_lend(8, 4 * MIB));
        assert!(!may_lend(9, 4 * MIB));
        // 16 KiB pages: 32 MiB blocks; 64 KiB pages: 512 MiB blocks. One at a time.
        assert_eq!(lend_window(32 * MIB), 1);
        assert_eq!(lend_window(512 * MIB), 1);
        assert!(may_lend(0, 512 * MIB));
        assert!(!may_lend(1, 512 * MIB));
        assert_eq!(lend_window(0), 1);
    }

    #[test]
    fn the_shrinker_frees_whole_blocks_covering_the_request() {
        assert_eq!(blocks_covering(0, 1024), 0);
        assert_eq!(blocks_covering(1, 1024), 1);
        assert_eq!(blocks_covering(1024, 1024), 1);
        assert_eq!(blocks_covering(1025, 1024), 2);
        assert_eq!(blocks_covering(128, 1024), 1);
        assert_eq!(blocks_covering(usize::MAX, 1024), usize::MAX / 1024 + 1);
        assert_eq!(blocks_covering(5, 0), 0);
    }
}
