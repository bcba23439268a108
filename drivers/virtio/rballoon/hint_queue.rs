// SPDX-License-Identifier: GPL-2.0

//! Free page hinting, the I/O side: the free page queue, the blocks lent to the host and kept
//! afterwards, the shrinker that gives them back under memory pressure, and the debugfs counters.
//!
//! The protocol decisions (which command id, when to stop, when to give blocks back) are
//! `hint.rs`; this is the C driver's `send_cmd_id_start()`, `send_cmd_id_stop()`,
//! `get_free_page_and_send()`, `return_free_pages_to_mm()` and its shrinker.
//!
//! As in C, DONE and the shrinker free every hinted block, whether or not the host has given its
//! buffer back (the specification lets the driver release hinted pages at any time): the queue
//! is only told where a block is ([`Virtqueue::hint_pages`]), the driver keeps it. That needs a
//! device that addresses guest memory directly, which the balloon's is (it refuses
//! `VIRTIO_F_ACCESS_PLATFORM`), but for Xen's, which goes through the DMA API; there a block is
//! lent to the queue instead ([`Virtqueue::add_inbuf_pages`]), and is the driver's to free only
//! once the host has given it back or the queue is dropped after the device was stopped.

use crate::hint::{self, Action, CmdIds, CMD_ID_STOP};
use kernel::{
    alloc::flags::GFP_NOWAIT,
    debugfs::Scope,
    device::Bound,
    new_mutex, new_spinlock,
    prelude::*,
    shrinker::{ScanResult, Shrink, ShrinkControl},
    sync::{
        atomic::{Atomic, Full, Relaxed, Release},
        Mutex, SpinLock,
    },
    time::{delay::fsleep, Delta, Instant, Monotonic},
    virtio::{self, Endian, OutBuffer, PageBlock, PageBuffer, Virtqueue},
};

/// Order of the hinted blocks (the C `VIRTIO_BALLOON_HINT_BLOCK_ORDER`, `MAX_PAGE_ORDER`).
const BLOCK_ORDER: u32 = PageBlock::MAX_ORDER;

/// Pages in one hinted block (the C `VIRTIO_BALLOON_HINT_BLOCK_PAGES`).
const BLOCK_PAGES: usize = 1 << BLOCK_ORDER;

/// Bytes in one hinted block.
const BLOCK_BYTES: usize = kernel::page::PAGE_SIZE << BLOCK_ORDER;

/// At DONE, how long to wait for lent blocks the host still holds, and how often to look.
const DONE_WAIT: Delta = Delta::from_millis(1000);
const DONE_POLL: Delta = Delta::from_millis(10);

/// While the host holds the window ([`hint::lend_window`]), how often to look whether it gave
/// some back, and for how long before the round ends. Far below the freezer's 20 s: the round
/// runs on a freezable workqueue, and suspend waits for it; a host that sits on the blocks must
/// not make suspend fail (it ends the round instead, and the host can ask again).
const LEND_POLL: Delta = Delta::from_millis(1);
const LEND_WAIT: Delta = Delta::from_millis(2_000);

/// A buffer on the free page queue: a command id the host reads, or a block it is told of.
pub(crate) enum HintBuf {
    /// A command id in device byte order (start or stop of a round).
    CmdId([u8; 4]),
    /// A free block lent to the queue, for a device behind a DMA mapping.
    Block(PageBlock),
    /// The token of a block the device was told of and the driver keeps ([`Blocks::kept`]).
    Hinted,
}

impl OutBuffer for HintBuf {
    fn out_bytes(&self) -> &[u8] {
        match self {
            HintBuf::CmdId(id) => id,
            // Blocks are in-buffers; queueing one as an out-buffer fails with EINVAL.
            HintBuf::Block(_) | HintBuf::Hinted => &[],
        }
    }
}

impl PageBuffer for HintBuf {
    fn page_block(&self) -> Option<&PageBlock> {
        match self {
            HintBuf::Block(block) => Some(block),
            HintBuf::CmdId(_) | HintBuf::Hinted => None,
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
    /// Blocks the driver may free at any time, kept until DONE or memory pressure: those the
    /// host was told of ([`HintBuf::Hinted`]), and lent ones it has given back.
    kept: KVec<PageBlock>,
    /// Blocks lent to the queue ([`HintBuf::Block`]), not given back yet.
    lent: usize,
    /// Blocks the host was told of ([`HintBuf::Hinted`]) whose buffer it has not given back.
    told: usize,
}

impl Blocks<'_> {
    /// Takes back every buffer the host has used (C: "Detach all the used buffers from the vq").
    fn reap(&mut self) {
        let Some(vq) = self.vq.as_mut() else {
            return;
        };
        while let Some((buf, _len)) = vq.get_buf() {
            match KBox::into_inner(buf) {
                HintBuf::Block(block) => {
                    self.lent = self.lent.saturating_sub(1);
                    // Cannot fail (type invariant); if it did, the block would just go back to
                    // the page allocator early, which hinting allows.
                    let _ = self.kept.push_within_capacity(block);
                }
                HintBuf::Hinted => self.told = self.told.saturating_sub(1),
                HintBuf::CmdId(_) => {}
            }
        }
    }

    /// Blocks the driver holds for hinting.
    fn held(&self) -> usize {
        self.kept.len() + self.lent
    }

    /// Blocks on the queue that the host has not given back: what the window bounds.
    fn out(&self) -> usize {
        self.lent + self.told
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
    /// The byte order the device reads command ids in.
    endian: Endian,
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
            endian: dev.endian(),
            blocks <- new_spinlock!(Blocks {
                vq: Some(vq),
                kept: KVec::new(),
                lent: 0,
                told: 0,
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
            let config = self.dev.config::<crate::Config>();
            config
                .and_then(|c| c.read::<u32, { crate::CFG_HINT_CMD_ID }>())
                .ok()
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
        let buf = KBox::new(HintBuf::CmdId(self.endian.u32_bytes(id)), GFP_KERNEL)?;
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
    /// Also unlike C, queues at most [`hint::lend_window`] blocks the host has not given back
    /// (see there), and waits a little for the host when it holds that many.
    fn send_free_blocks(&self, ids: &mut CmdIds) -> Result {
        // Since when the host holds the whole window; the clock, not a count of polls, as each
        // poll may sleep much longer than asked on a busy host.
        let mut full_since: Option<Instant<Monotonic>> = None;
        loop {
            self.received(ids);
            if !ids.keep_hinting() || self.pressure.load(Relaxed) {
                return Ok(());
            }
            if !hint::may_lend(self.out(), BLOCK_BYTES) {
                let since = *full_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= LEND_WAIT {
                    dev_warn!(self.dev, "The host holds every hinted block; round ends\n");
                    return Ok(());
                }
                fsleep(LEND_POLL);
                continue;
            }
            full_since = None;
            // No free block left: every free block of this size is with the host.
            let Some(block) = PageBlock::alloc_if_free(BLOCK_ORDER) else {
                return Ok(());
            };
            // The token goes on the queue; the block with it if the queue must own it.
            let mut token = KBox::new(HintBuf::Hinted, GFP_KERNEL)?;
            let mut guard = self.blocks.lock();
            guard.reap();
            let b = &mut *guard;
            let vq = b.vq.as_mut().ok_or(ENODEV)?;
            if !hint::room_for_block(vq.num_free()) {
                // The ring is full but for the stop id's slot: this block goes back, and the next
                // one may find room once the host has used some (as in C).
                drop(guard);
                drop((block, token));
                continue;
            }
            // INVARIANT: Room to keep every block that is or will be lent or kept, this one
            // included.
            b.kept.reserve(b.lent + 1, GFP_NOWAIT)?;
            if vq.addresses_guest_memory() {
                // Told, not lent: the block stays in `kept`, free to go back at any time.
                if let Err((e, token)) = vq.hint_pages(&block, token, GFP_NOWAIT) {
                    drop(guard);
                    drop((block, token));
                    return Err(e);
                }
                // Cannot fail: reserved above.
                let _ = b.kept.push_within_capacity(block);
                b.told += 1;
            } else {
                *token = HintBuf::Block(block);
                if let Err((e, token)) = vq.add_inbuf_pages(token, GFP_NOWAIT) {
                    drop(guard);
                    drop(token);
                    return Err(e);
                }
                b.lent += 1;
            }
            vq.kick();
            self.stats.hinted.add(1, Relaxed);
            self.publish(b);
        }
    }

    /// Blocks on the queue that the host has not given back, after taking back those it did.
    fn out(&self) -> usize {
        let mut b = self.blocks.lock();
        b.reap();
        self.publish(&b);
        b.out()
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

    /// DONE: every block goes back. Those the host was told of at once; lent ones as the host
    /// gives them back (it is done with them), waited for a bounded time, the queue kicked
    /// first: a host stopped for migration may not have seen the last ones.
    fn return_done(&self) {
        if let Some(vq) = self.blocks.lock().vq.as_mut() {
            vq.kick();
        }
        let start = Instant::<Monotonic>::now();
        while self.return_all() != 0 && start.elapsed() < DONE_WAIT {
            fsleep(DONE_POLL);
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
        b.told = 0;
        self.publish(&b);
        vq
    }

    /// Puts the queue created on restore in place.
    pub(crate) fn install(&self, vq: HintVq<'b>) {
        let mut b = self.blocks.lock();
        b.vq = Some(vq);
        b.lent = 0;
        b.told = 0;
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
