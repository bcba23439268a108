// SPDX-License-Identifier: GPL-2.0

//! Free page hinting, the I/O side: the free page queue, the blocks lent to the host and kept
//! afterwards, the shrinker that gives them back under memory pressure, and the debugfs counters.
//!
//! The protocol decisions (which command id, when to stop, when to give blocks back) are
//! `hint.rs`; this is the C driver's `send_cmd_id_start()`, `send_cmd_id_stop()`,
//! `get_free_page_and_send()`, `return_free_pages_to_mm()` and its shrinker.
//!
//! One difference from C: a block is the driver's to free only once the host has given its
//! buffer back. The C driver frees blocks still queued (the host only reads their addresses), the
//! Rust queue owns what it holds; so DONE and the shrinker free the blocks the host returned, and
//! blocks still queued are freed when they come back or, at the latest, when the queue is dropped
//! after the device reset (freeze, removal). QEMU hands every block back as soon as it has read it.

use crate::hint::{self, Action, CmdIds, CMD_ID_STOP};
use kernel::{
    alloc::flags::GFP_NOWAIT,
    bindings,
    debugfs::Scope,
    device::Bound,
    new_mutex, new_spinlock,
    prelude::*,
    shrinker::{ScanResult, Shrink, ShrinkControl},
    sync::{
        atomic::{Atomic, Full, Relaxed, Release},
        Mutex, SpinLock,
    },
    time::{delay::fsleep, Delta},
    virtio::{self, OutBuffer, PageBlock, PageBuffer, Virtqueue},
};

/// Order of the hinted blocks (the C `VIRTIO_BALLOON_HINT_BLOCK_ORDER`, `MAX_PAGE_ORDER`).
const BLOCK_ORDER: u32 = PageBlock::MAX_ORDER;

/// Pages in one hinted block (the C `VIRTIO_BALLOON_HINT_BLOCK_PAGES`).
const BLOCK_PAGES: usize = 1 << BLOCK_ORDER;

/// At DONE, how long to wait for blocks the host still holds, and how often to look.
const DONE_WAIT: Delta = Delta::from_millis(1000);
const DONE_POLL: Delta = Delta::from_millis(10);

/// While the host holds [`hint::LEND_WINDOW`] blocks, how often to look whether it gave some
/// back, and for how long before the round ends (a host that keeps them is a broken host; the
/// blocks it holds come back at DONE or when the queue is dropped).
const LEND_POLL: Delta = Delta::from_millis(1);
const LEND_WAIT: Delta = Delta::from_millis(30_000);

/// A buffer on the free page queue: a command id the host reads, or a block it is lent.
pub(crate) enum HintBuf {
    /// A command id in device byte order (start or stop of a round).
    CmdId([u8; 4]),
    /// A free block.
    Block(PageBlock),
}

impl OutBuffer for HintBuf {
    fn out_bytes(&self) -> &[u8] {
        match self {
            HintBuf::CmdId(id) => id,
            // Blocks are in-buffers; queueing one as an out-buffer fails with EINVAL.
            HintBuf::Block(_) => &[],
        }
    }
}

impl PageBuffer for HintBuf {
    fn page_block(&self) -> Option<&PageBlock> {
        match self {
            HintBuf::Block(block) => Some(block),
            HintBuf::CmdId(_) => None,
        }
    }
}

/// The free page queue (`free_page_vq`).
pub(crate) type HintVq<'b> = Virtqueue<'b, HintBuf>;

/// The queue and the blocks hinted to the host (the C `free_page_list` and its lock's data).
///
/// # Invariants
///
/// `kept.capacity() >= kept.len() + lent`, so that taking back what the host used never
/// allocates.
struct Blocks<'b> {
    /// `None` between freeze and restore.
    vq: Option<HintVq<'b>>,
    /// Blocks the host has given back, kept until DONE or memory pressure.
    kept: KVec<PageBlock>,
    /// Blocks on the queue, not given back yet.
    lent: usize,
}

impl Blocks<'_> {
    /// Takes back every buffer the host has used (C: "Detach all the used buffers from the vq").
    fn reap(&mut self) {
        let Some(vq) = self.vq.as_mut() else {
            return;
        };
        while let Some((buf, _len)) = vq.get_buf() {
            if let HintBuf::Block(block) = KBox::into_inner(buf) {
                self.lent = self.lent.saturating_sub(1);
                // Cannot fail (type invariant); if it did, the block would just go back to the
                // page allocator early, which hinting allows.
                let _ = self.kept.push_within_capacity(block);
            }
        }
    }

    /// Blocks the driver holds for hinting.
    fn held(&self) -> usize {
        self.kept.len() + self.lent
    }
}

/// Hinting counters, in debugfs under `rballoon/`.
struct Counters {
    /// Blocks the driver holds for hinting now (lent to the host or kept).
    held: Atomic<usize>,
    /// Blocks lent to the host since the driver was bound.
    hinted: Atomic<usize>,
    /// Rounds started (command ids sent).
    rounds: Atomic<usize>,
    /// Blocks given back to the page allocator under memory pressure.
    shrunk: Atomic<usize>,
}

impl Counters {
    fn new() -> Self {
        Self {
            held: Atomic::new(0),
            hinted: Atomic::new(0),
            rounds: Atomic::new(0),
            shrunk: Atomic::new(0),
        }
    }
}

/// Free page hinting for one device.
#[pin_data]
pub(crate) struct Hinting<'b> {
    dev: &'b virtio::Device<Bound>,
    /// Whether the device reads command ids little-endian.
    little_endian: bool,
    /// Taken by the hint work and the shrinker; never held while allocating with reclaim.
    #[pin]
    blocks: SpinLock<Blocks<'b>>,
    /// Only the hint work uses the command ids.
    #[pin]
    ids: Mutex<CmdIds>,
    /// The configuration changed since the command id was last read.
    changed: Atomic<bool>,
    /// The shrinker ran during this round: take no more blocks until the next one.
    pressure: Atomic<bool>,
    #[pin]
    stats: Scope<Counters>,
}

impl<'b> Hinting<'b> {
    /// Hinting on the free page queue `vq` of `dev`.
    pub(crate) fn new(
        dev: &'b virtio::Device<Bound>,
        vq: HintVq<'b>,
    ) -> impl PinInit<Self, Error> + 'b {
        try_pin_init!(Self {
            dev,
            little_endian: dev.is_little_endian(),
            blocks <- new_spinlock!(Blocks {
                vq: Some(vq),
                kept: KVec::new(),
                lent: 0,
            }),
            ids <- new_mutex!(CmdIds::new()),
            // Read the command id on the first run, whatever the host set before we were bound.
            changed: Atomic::new(true),
            pressure: Atomic::new(false),
            stats <- Scope::dir(Counters::new(), c"rballoon", |c, dir| {
                dir.read_only_file(c"hint_blocks_held", &c.held);
                dir.read_only_file(c"hint_blocks_hinted", &c.hinted);
                dir.read_only_file(c"hint_rounds", &c.rounds);
                dir.read_only_file(c"hint_blocks_shrunk", &c.shrunk);
            }),
        }? Error)
    }

    /// The configuration changed: the hint work must read the command id again (the C
    /// `config_read_bitmap` bit). Called in atomic context.
    pub(crate) fn config_changed(&self) {
        self.changed.store(true, Release);
    }

    /// The latest command id (the C `virtio_balloon_cmd_id_received()`).
    fn received(&self, ids: &mut CmdIds) -> u32 {
        let changed = self.changed.xchg(false, Full);
        ids.received(changed, || {
            let offset = core::mem::offset_of!(bindings::virtio_balloon_config, __bindgen_anon_1);
            // The balloon's configuration is little-endian even on legacy devices.
            self.dev.config_read_le::<u32>(offset).ok()
        })
    }

    /// The hint work (the C `report_free_page_func()`), on the device's own workqueue.
    pub(crate) fn work(&self) {
        let mut ids = self.ids.lock();
        self.received(&mut ids);
        match ids.action() {
            Action::Idle => {}
            Action::ReturnAll => self.return_done(),
            Action::Hint(id) => self.round(&mut ids, id),
        }
    }

    /// One round: the id, free blocks while the id stays, the stop id (the C
    /// `virtio_balloon_report_free_page()`).
    fn round(&self, ids: &mut CmdIds, id: u32) {
        ids.start(id);
        self.pressure.store(false, Relaxed);
        self.stats.rounds.add(1, Relaxed);
        if let Err(e) = self.send_cmd_id(id) {
            dev_err!(self.dev, "Failed to send a start id, err = {:?}\n", e);
        }
        if let Err(e) = self.send_free_blocks(ids) {
            dev_err!(self.dev, "Failed to send a free page, err = {:?}\n", e);
        }
        if let Err(e) = self.send_cmd_id(CMD_ID_STOP) {
            dev_err!(self.dev, "Failed to send a stop id, err = {:?}\n", e);
        }
    }

    /// Sends command id `id` (the C `send_cmd_id_start()` / `send_cmd_id_stop()`).
    fn send_cmd_id(&self, id: u32) -> Result {
        let buf = KBox::new(
            HintBuf::CmdId(hint::cmd_id_bytes(id, self.little_endian)),
            GFP_KERNEL,
        )?;
        let mut b = self.blocks.lock();
        b.reap();
        self.publish(&b);
        let vq = b.vq.as_mut().ok_or(ENODEV)?;
        vq.add_outbuf(buf, GFP_NOWAIT).map_err(|(e, _buf)| e)?;
        vq.kick();
        Ok(())
    }

    /// Lends free blocks to the host while the round's id stays and blocks can be had (the C
    /// `send_free_pages()` and `get_free_page_and_send()`).
    ///
    /// Unlike C, stops once the shrinker has run: a block given back under memory pressure would
    /// otherwise be the very next one taken (the allocation only needs the min watermark), and on
    /// a small or slow guest the two go round until the OOM killer runs out of tasks.
    ///
    /// Also unlike C, lends at most [`hint::LEND_WINDOW`] blocks the host has not given back
    /// (see there), and waits for the host when it holds that many.
    fn send_free_blocks(&self, ids: &mut CmdIds) -> Result {
        let mut waited = Delta::ZERO;
        loop {
            self.received(ids);
            if !ids.keep_hinting() || self.pressure.load(Relaxed) {
                return Ok(());
            }
            if !hint::may_lend(self.lent()) {
                if waited >= LEND_WAIT {
                    dev_warn!(self.dev, "The host holds every hinted block; round ends\n");
                    return Ok(());
                }
                fsleep(LEND_POLL);
                waited += LEND_POLL;
                continue;
            }
            waited = Delta::ZERO;
            // No free block left: every free block of this size is with the host.
            let Some(block) = PageBlock::alloc_if_free(BLOCK_ORDER) else {
                return Ok(());
            };
            let buf = KBox::new(HintBuf::Block(block), GFP_KERNEL)?;
            let mut guard = self.blocks.lock();
            guard.reap();
            let b = &mut *guard;
            let vq = b.vq.as_mut().ok_or(ENODEV)?;
            if !hint::room_for_block(vq.num_free()) {
                // The ring is full but for the stop id's slot: this block goes back, and the next
                // one may find room once the host has used some (as in C).
                drop(guard);
                drop(buf);
                continue;
            }
            // INVARIANT: Room to keep every block that is or will be lent, this one included.
            b.kept.reserve(b.lent + 1, GFP_NOWAIT)?;
            if let Err((e, buf)) = vq.add_inbuf_pages(buf, GFP_NOWAIT) {
                drop(guard);
                drop(buf);
                return Err(e);
            }
            vq.kick();
            b.lent += 1;
            self.stats.hinted.add(1, Relaxed);
            self.publish(b);
        }
    }

    /// Blocks lent to the host now, after taking back those it gave back.
    fn lent(&self) -> usize {
        let mut b = self.blocks.lock();
        b.reap();
        self.publish(&b);
        b.lent
    }

    /// Updates the debugfs count of held blocks.
    fn publish(&self, b: &Blocks<'_>) {
        self.stats.held.store(b.held(), Relaxed);
    }

    /// Gives every kept block back to the page allocator (DONE, or the driver goes away): the C
    /// `return_free_pages_to_mm(vb, ULONG_MAX)`. Returns how many blocks are still lent.
    pub(crate) fn return_all(&self) -> usize {
        let mut b = self.blocks.lock();
        b.reap();
        // Freeing pages does not sleep; the C driver frees them under its lock too.
        while b.kept.pop().is_some() {}
        self.publish(&b);
        b.lent
    }

    /// DONE: every block goes back, including those the host is about to give back (it is done
    /// with them, and gives each back right after reading it), waited for a bounded time.
    fn return_done(&self) {
        let mut waited = Delta::ZERO;
        while self.return_all() != 0 && waited < DONE_WAIT {
            fsleep(DONE_POLL);
            waited += DONE_POLL;
        }
    }

    /// Takes the queue away for freeze, after giving the kept blocks back; blocks still lent are
    /// freed with the queue's buffers when the caller drops it.
    pub(crate) fn take_vq(&self) -> Option<HintVq<'b>> {
        let mut b = self.blocks.lock();
        b.reap();
        while b.kept.pop().is_some() {}
        let vq = b.vq.take();
        // INVARIANT: Nothing is lent without a queue.
        b.lent = 0;
        self.publish(&b);
        vq
    }

    /// Puts the queue created on restore in place.
    pub(crate) fn install(&self, vq: HintVq<'b>) {
        let mut b = self.blocks.lock();
        b.vq = Some(vq);
        b.lent = 0;
        self.publish(&b);
    }
}

impl Shrink for Hinting<'_> {
    /// Pages in kept blocks (the C `virtio_balloon_shrinker_count()`).
    fn count_objects(&self, _sc: &ShrinkControl<'_>) -> usize {
        let mut b = self.blocks.lock();
        b.reap();
        self.publish(&b);
        b.kept.len() * BLOCK_PAGES
    }

    /// Gives back whole blocks covering the pages asked for (the C
    /// `virtio_balloon_shrinker_scan()`): the hints stay valid, the host merely sends those pages
    /// after all if the guest writes them.
    fn scan_objects(&self, sc: &mut ShrinkControl<'_>) -> ScanResult {
        self.pressure.store(true, Relaxed);
        let want = hint::blocks_covering(sc.nr_to_scan(), BLOCK_PAGES);
        let mut b = self.blocks.lock();
        b.reap();
        let mut freed = 0;
        while freed < want && b.kept.pop().is_some() {
            freed += 1;
        }
        self.publish(&b);
        drop(b);
        self.stats.shrunk.add(freed, Relaxed);
        ScanResult::Freed(freed * BLOCK_PAGES)
    }
}
