// SPDX-License-Identifier: GPL-2.0

//! Virtio memory balloon driver, in Rust.
//!
//! The host sets a target size (`num_pages`, in 4 KiB balloon pages) in the device configuration;
//! the driver inflates the balloon by allocating guest pages and handing their frame numbers to
//! the host on the inflate queue, or deflates it by telling the host on the deflate queue which
//! pages it takes back, and reports the size it reached in `actual`. Optionally the host polls
//! memory statistics on the stats queue.
//!
//! It follows the C driver, `drivers/virtio/virtio_balloon.c`:
//!
//! - the same queue list (absent queues left nameless so that the transport numbers them alike),
//! - at most 256 PFNs per request buffer; unlike C, one step queues up to 16 such buffers, kicks
//!   once and waits once until the host has used them all (see `batch.rs`),
//! - deflated pages are given back to the page allocator only after the host was told
//!   (`VIRTIO_BALLOON_F_MUST_TELL_HOST`),
//! - when pages cannot be allocated: "Out of puff!", a 200 ms pause and a later retry,
//! - `actual` written after each step, size changes handled on the freezable system workqueue and
//!   dropped once the driver is going away,
//! - the stats queue primed with one buffer before the device goes live, and every host request
//!   answered with a fresh buffer,
//! - with `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` an OOM notifier that deflates 256 balloon pages per
//!   call, and without it inflated pages taken out of the managed page count,
//! - `VIRTIO_BALLOON_F_PAGE_POISON` kept only with `init_on_free` or page poisoning, and the poison
//!   value written before the device goes live; page reporting dropped when the host cannot be
//!   told what free pages hold,
//! - free page reporting (`VIRTIO_BALLOON_F_REPORTING`) on the reporting queue, its capacity the
//!   queue size,
//! - balloon page migration telling the host about the old page, then the new one; the module
//!   parameter `migration=0` refuses every migration instead. 7.3 has no other way to turn it off
//!   at run time: with `CONFIG_BALLOON_MIGRATION` the core makes every inflated page movable and
//!   calls the device's `migratepage` unconditionally, so it cannot be left out; the parameter
//!   lets a test compare compaction with and without balloon migration on one kernel,
//! - on removal: no more updates, the whole balloon deflated, the device reset, the queues
//!   deleted; on freeze the same without removal, and the queues created again on restore,
//! - the device made wakeup capable, and its wakeup source kept active from a size change or a
//!   stats request until the work handling it is done, so that the system does not suspend
//!   halfway through adjusting the balloon.
//! - free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`): on the host's command id, free
//!   blocks of `MAX_PAGE_ORDER` told of on the free page queue (one slot kept for the command
//!   id) from the device's own workqueue, kept until the host says DONE, given back under memory
//!   pressure by a shrinker, and on removal and freeze (`hint.rs`, `hint_queue.rs`).

// The driver is safe code on top of `kernel::virtio` and `kernel::balloon`: every `unsafe` belongs
// in those abstractions, where its contract is stated once for every driver. `forbid` makes rustc
// refuse any unsafe block, fn, impl or trait, `#[no_mangle]`, `#[link_section]` and any
// `allow(unsafe_code)` in this crate and its modules, in every build. Code that macros of the
// kernel crate generate (`module_virtio_driver!`, `#[kunit_tests]`) is theirs and not checked.
#![forbid(unsafe_code)]

use kernel::{
    alloc::flags::GFP_NOWAIT,
    balloon::{
        self, stats::MemStats, BalloonBlock, BalloonDevInfo, BalloonMigrate, BalloonOom,
        BalloonPage, BalloonReport, DeflatedPage, MigrateMode, MigratingPage, ReportedPages,
    },
    bindings,
    device::{Bound, Core},
    new_condvar, new_mutex, new_spinlock_irq,
    page::PAGE_SHIFT,
    prelude::*,
    shrinker::Shrinker,
    sync::{
        atomic::{Acquire, Atomic, Relaxed, Release},
        CondVar, CondVarTimeoutResult, Mutex, SpinLockIrq,
    },
    time::{delay::fsleep, msecs_to_jiffies, Delta, Instant, Monotonic},
    virtio::{self, Virtqueue, VirtqueueInfo},
};

mod batch;
mod hint;
mod hint_queue;
mod pfn;
mod stats;
mod target;

use batch::{PfnBatch, MAX_BUFFERS_IN_FLIGHT, STEP_PFNS_MAX};
use hint_queue::{HintVq, Hinting};
use pfn::{Geometry, PfnBuffer, PAGES_PER_PAGE, VIRTIO_BALLOON_ARRAY_PFNS_MAX};
use stats::StatsBuffer;
use target::Step;

/// The balloon's configuration space (read and written through [`virtio::ConfigSpace`], which
/// checks each field against the structure and against what the device has with its features).
type Config = bindings::virtio_balloon_config;
/// The host's target, in 4 KiB balloon pages.
const CFG_NUM_PAGES: usize = core::mem::offset_of!(Config, num_pages);
/// The balloon's size as the driver tells it, in 4 KiB balloon pages.
const CFG_ACTUAL: usize = core::mem::offset_of!(Config, actual);
/// The free page hinting command id (with `VIRTIO_BALLOON_F_FREE_PAGE_HINT`).
const CFG_HINT_CMD_ID: usize = core::mem::offset_of!(Config, __bindgen_anon_1);
/// The value free pages are filled with (with `VIRTIO_BALLOON_F_PAGE_POISON`).
const CFG_POISON_VAL: usize = core::mem::offset_of!(Config, poison_val);

/// Positions in the queue list, as the C `enum virtio_balloon_vq`.
const VQ_INFLATE: usize = 0;
const VQ_DEFLATE: usize = 1;
const VQ_STATS: usize = 2;
const VQ_FREE_PAGE: usize = 3;
const VQ_REPORTING: usize = 4;

/// Deferred work items.
const WORK_SIZE: usize = 0;
const WORK_STATS: usize = 1;
/// Free page hinting, on the device's own workqueue.
const WORK_HINT: usize = 2;

/// Wakeup signals: which work items have an event to handle, as the C
/// `VIRTIO_BALLOON_WAKEUP_SIGNAL_*`.
const WAKEUP_SIGNAL_ADJUST: u32 = 1 << 0;
const WAKEUP_SIGNAL_STATS: u32 = 1 << 1;

/// Guest pages in one full request buffer.
const MAX_GUEST_PAGES: usize = VIRTIO_BALLOON_ARRAY_PFNS_MAX / PAGES_PER_PAGE as usize;

/// Guest pages in a 2 MiB block, which inflation takes whole once the page allocator has no
/// smaller free pages to give (single pages would split a block then anyway), or while any block
/// is free when the operator asks (module parameter `blocks=1`): taking free blocks while holes
/// are left costs the guest the free 2 MiB blocks compaction needs, and with them most of its
/// huge pages (see "Inflation and compaction" in Documentation/driver-api/virtio/rust_balloon.rst).
const BLOCK_PAGES: usize = 1 << BalloonBlock::HUGE_ORDER;

/// Full buffers sent together while a step goes on: the host reads them while the next ones are
/// filled. One at a time made the host notify (and the guest take an interrupt) per buffer.
const SEND_BUFFERS: usize = 4;

/// Guest pages in one full step (a batch of full request buffers).
const STEP_GUEST_PAGES: usize = STEP_PFNS_MAX / PAGES_PER_PAGE as usize;

/// Balloon pages (4 KiB) to deflate per OOM notification, as the C driver.
const OOM_NR_PAGES: usize = 256;

/// Priority of the OOM notifier, as the C driver's.
const OOM_NOTIFY_PRIORITY: i32 = 80;

/// How long to wait before trying to allocate again when memory is short, as the C driver.
const OUT_OF_PUFF_DELAY: Delta = Delta::from_millis(200);

kernel::virtio_device_table!(
    RBALLOON_TABLE,
    [virtio::DeviceId::new(bindings::VIRTIO_ID_BALLOON)]
);

impl virtio::OutBuffer for PfnBuffer {
    fn out_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl virtio::OutBuffer for StatsBuffer {
    fn out_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// `printk_ratelimit()`-like limiter: 10 messages per 5 seconds, the kernel's default.
struct RateLimit {
    begin: Option<Instant<Monotonic>>,
    printed: u32,
}

impl RateLimit {
    const INTERVAL: Delta = Delta::from_secs(5);
    const BURST: u32 = 10;

    const fn new() -> Self {
        Self {
            begin: None,
            printed: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let expired = match &self.begin {
            Some(begin) => begin.elapsed() > Self::INTERVAL,
            None => true,
        };
        if expired {
            self.begin = Some(Instant::now());
            self.printed = 0;
        }
        self.printed = self.printed.saturating_add(1);
        self.printed <= Self::BURST
    }
}

/// The wakeup event state (the C driver's `wakeup_lock` and what it protects).
struct Wakeup {
    /// Whether the device's wakeup source is active (`pm_stay_awake()` was called).
    processing: bool,
    /// `WAKEUP_SIGNAL_*` bits of the events signalled but not yet taken up by their work item.
    signal_mask: u32,
}

/// The inflate and deflate queues.
struct Queues<'b> {
    inflate: Virtqueue<'b, PfnBuffer>,
    deflate: Virtqueue<'b, PfnBuffer>,
}

/// The stats queue. Its single buffer goes back and forth between the driver and the host.
struct StatsQueue<'b> {
    vq: Virtqueue<'b, StatsBuffer>,
}

/// The reporting queue and the token that identifies a report in it.
struct Reporting<'b> {
    vq: Virtqueue<'b, ()>,
    /// `None` only while a report is with the host.
    token: Option<KBox<()>>,
}

/// All queues, as created together by [`init_vqs`].
struct AllQueues<'b> {
    queues: Queues<'b>,
    stats: Option<StatsQueue<'b>>,
    hint: Option<HintVq<'b>>,
    reporting: Option<Reporting<'b>>,
}

/// What the balloon lock protects (the C driver's `balloon_lock`).
struct Inner<'b> {
    /// `None` between freeze and restore.
    queues: Option<Queues<'b>>,
    /// The request buffers; all of them are here but while the host holds some.
    pfns: PfnBatch,
    /// Buffers queued on the inflate or deflate queue and not used yet (see [`Host::send`]).
    in_flight: usize,
    /// Pages being deflated, kept until the host was told. Preallocated for a full step.
    deflated: KVVec<DeflatedPage>,
    /// Balloon pages (4 KiB) the host has been told about.
    num_pages: u32,
    /// Whether the host takes requests.
    host: HostState,
}

/// Whether the host takes inflate and deflate requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HostState {
    /// It uses them.
    Answering,
    /// It let [`HOST_TIMEOUT_MS`] pass without using one (a VMM stopped or frozen, a starved I/O
    /// thread): nothing more is sent, so nothing else waits for it, and no page leaves the
    /// balloon (see [`leak`]), until it has used every request it holds ([`Host::catch_up`]).
    Stalled,
    /// The queue broke, or the driver, going away, stopped the device to take back reported
    /// pages: nothing more is sent until the device is set up anew (restore).
    Gone,
}

/// One direction's queue with the request buffers and counters that go with it, borrowed from
/// [`Inner`] for a send or a wait.
struct Link<'a, 'b> {
    vq: &'a mut Virtqueue<'b, PfnBuffer>,
    pfns: &'a mut PfnBatch,
    in_flight: &'a mut usize,
    host: &'a mut HostState,
}

impl<'b> Inner<'b> {
    /// The queue for `dir` and what goes with it; `None` between freeze and restore.
    fn link(&mut self, dir: Direction) -> Option<Link<'_, 'b>> {
        let queues = self.queues.as_mut()?;
        let vq = match dir {
            Direction::Inflate => &mut queues.inflate,
            Direction::Deflate => &mut queues.deflate,
        };
        Some(Link {
            vq,
            pfns: &mut self.pfns,
            in_flight: &mut self.in_flight,
            host: &mut self.host,
        })
    }
}

/// How long the driver waits for the host to use an inflate or deflate request. QEMU answers in
/// well under a millisecond, even under TCG with a debug guest; a host that takes this long is
/// broken or hostile, and waiting longer would hang the size work, remove and freeze with it.
const HOST_TIMEOUT_MS: u32 = 30_000;

/// How far a request got (see [`Host::tell_page`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Told {
    /// The host used it.
    Yes,
    /// It is with the host, which has not used it (yet): it may still act on it at any time.
    Queued,
    /// The host never got it.
    No,
}

/// Which queue a request goes to.
#[derive(Clone, Copy)]
enum Direction {
    Inflate,
    Deflate,
}

/// The part of the driver that the balloon core's callbacks (migration, OOM, page reporting) run
/// on.
#[pin_data]
struct Host<'b> {
    dev: &'b virtio::Device<Bound>,
    #[pin]
    lock: Mutex<Inner<'b>>,
    /// Counts the used-buffer notifications of the inflate, deflate and reporting queues.
    #[pin]
    acks: SpinLockIrq<u64>,
    #[pin]
    acked: CondVar,
    /// Whether [`Inner::host`] is [`HostState::Stalled`], for the queue callbacks (interrupt
    /// context, where the lock cannot be taken): a buffer used then brings the size work back to
    /// catch up with the host.
    stalled: Atomic<bool>,
    /// The driver is going away (unbind, freeze): a report waits for the host a bounded time
    /// only, and no new one starts.
    leaving: Atomic<bool>,
    /// `None` without `VIRTIO_BALLOON_F_REPORTING`, and between freeze and restore.
    #[pin]
    reporting: Mutex<Option<Reporting<'b>>>,
}

/// The balloon device: the balloon core's page list and the driver state it calls back into.
type Balloon<'b> = BalloonDevInfo<Host<'b>>;

impl Host<'_> {
    /// Whether the host answers requests. A stalled host that has used every request it held
    /// since answers again: its buffers are taken back, and the balloon follows the target again.
    fn catch_up(&self) -> bool {
        let mut inner = self.lock.lock();
        if inner.host != HostState::Stalled {
            return inner.host == HostState::Answering;
        }
        let Inner {
            queues,
            pfns,
            in_flight,
            host,
            ..
        } = &mut *inner;
        let Some(queues) = queues.as_mut() else {
            return false;
        };
        for vq in [&mut queues.inflate, &mut queues.deflate] {
            while let Some((buf, _len)) = vq.get_buf() {
                pfns.give_back(buf);
                *in_flight = in_flight.saturating_sub(1);
            }
            if vq.is_broken() {
                dev_err!(
                    self.dev,
                    "the request queue broke while the host held requests: no more are sent\n"
                );
                *host = HostState::Gone;
                self.stalled.store(false, Relaxed);
                return false;
            }
        }
        if *in_flight != 0 {
            return false;
        }
        *host = HostState::Answering;
        self.stalled.store(false, Relaxed);
        dev_info!(
            self.dev,
            "the host used the requests it held: the balloon follows the target again\n"
        );
        true
    }

    /// After a reset (freeze and restore) the device is a new one: a host that stalled or went
    /// gets another chance, with new request buffers for those the old queues kept and freed.
    fn start_afresh(&self) -> Result {
        let mut inner = self.lock.lock();
        if inner.host != HostState::Answering {
            inner.pfns = PfnBatch::new(
                MAX_BUFFERS_IN_FLIGHT,
                Geometry::KERNEL,
                self.dev.endian(),
                GFP_KERNEL,
            )?;
            inner.host = HostState::Answering;
            self.stalled.store(false, Relaxed);
        }
        self.leaving.store(false, Release);
        Ok(())
    }

    /// The driver is going away (unbind, freeze): a report the host holds is given up on after
    /// at most [`HOST_TIMEOUT_MS`] more, and no new one starts, so that unregistering page
    /// reporting and taking the reporting queue are bounded.
    fn leave(&self) {
        self.leaving.store(true, Release);
        // Wakes a report waiting for the host, to look at `leaving`.
        self.ack();
    }

    /// Waits until the host gives back the report on `vq`, however long it takes while the
    /// driver stays: the reported pages are the host's to process, and stopping the device to
    /// take them back would stop the balloon with it. Says once that the host holds them past
    /// [`HOST_TIMEOUT_MS`], and once that it gave them back.
    ///
    /// `None` once the driver is leaving and the host still held the report at the end of a
    /// wait of at most [`HOST_TIMEOUT_MS`], or broke the queue, from which nothing comes back.
    fn wait_report<T>(&self, vq: &mut Virtqueue<'_, T>) -> Option<KBox<T>> {
        let mut stalled = false;
        loop {
            if let Some(buf) = self.wait_used(vq) {
                if stalled {
                    dev_info!(self.dev, "the host gave back the reported free pages\n");
                }
                return Some(buf);
            }
            if self.leaving.load(Acquire) {
                return None;
            }
            if vq.is_broken() {
                dev_err!(
                    self.dev,
                    "the reporting queue broke while the host held reported free pages: they \
                     come back when the driver goes away\n"
                );
                self.wait_leaving();
                return None;
            }
            if !stalled {
                stalled = true;
                dev_warn!(
                    self.dev,
                    "the host holds reported free pages for more than {} ms; waiting\n",
                    HOST_TIMEOUT_MS
                );
            }
        }
    }

    /// Sleeps until the driver is leaving ([`Host::leave`]). Interruptible, so that a wait as
    /// long as the device lives is not reported as a hung task; kernel workers get no signals.
    fn wait_leaving(&self) {
        let mut acks = self.acks.lock();
        // `leave` sets the flag before it takes the lock to notify: no wakeup is lost.
        while !self.leaving.load(Acquire) {
            let _signal = self.acked.wait_interruptible(&mut acks);
        }
    }

    /// A queue used a buffer (the C `balloon_ack()`).
    fn ack(&self) {
        let mut acks = self.acks.lock();
        *acks = acks.wrapping_add(1);
        drop(acks);
        self.acked.notify_all();
    }

    /// Waits at most [`HOST_TIMEOUT_MS`] until the device returns a buffer on `vq` (the C
    /// `wait_event(vb->acked, virtqueue_get_buf(vq, &len))`, bounded); `None` if it did not, or
    /// broke the queue (the buffer then stays with the queue until the device is reset).
    fn wait_used<T>(&self, vq: &mut Virtqueue<'_, T>) -> Option<KBox<T>> {
        let mut left = msecs_to_jiffies(HOST_TIMEOUT_MS);
        loop {
            let seen = *self.acks.lock();
            if let Some((buf, _len)) = vq.get_buf() {
                return Some(buf);
            }
            // A used buffer the driver never queued breaks the queue: nothing comes back from
            // it any more, so there is nothing to wait for.
            if left == 0 || vq.is_broken() {
                return None;
            }
            // A notification after `seen` was read changes the count: no wakeup is lost.
            let mut acks = self.acks.lock();
            if *acks != seen {
                continue;
            }
            left = match self.acked.wait_interruptible_timeout(&mut acks, left) {
                CondVarTimeoutResult::Timeout => 0,
                CondVarTimeoutResult::Woken { jiffies } => jiffies,
                // Remove runs in the task that asked for it: a signal must not end the wait
                // early, nor turn it into a busy loop.
                CondVarTimeoutResult::Signal { jiffies } => {
                    drop(acks);
                    fsleep(Delta::from_millis(10));
                    jiffies.saturating_sub(msecs_to_jiffies(10))
                }
            };
        }
    }

    /// Queues the filled buffers of `inner.pfns` on `dir`'s queue and notifies the device,
    /// without waiting for it: the host works on them while the caller fills the next buffer, and
    /// [`Host::finish`] waits for them all. Waits for a used buffer only when the queue is full or
    /// the batch would have no empty buffer left for the caller to fill.
    ///
    /// Returns `false` if a request could not be queued: the device is broken, or the host does
    /// not answer (see [`Host::wait_in_flight`]). The caller must call [`Host::finish`] either way.
    fn send(&self, inner: &mut Inner<'_>, dir: Direction) -> bool {
        let Some(mut l) = inner.link(dir) else {
            return false;
        };
        let mut queued = false;
        let mut sent = true;
        while *l.host == HostState::Answering && l.pfns.filled() != 0 {
            if batch::buffers_that_fit(l.vq.num_free()) == 0 {
                if !self.wait_in_flight(&mut l, 1) {
                    sent = false;
                    break;
                }
                continue;
            }
            let Some(buf) = l.pfns.take() else {
                break;
            };
            // The queue had room for this buffer, so this only fails on a broken device.
            if let Err((e, buf)) = l.vq.add_outbuf(buf, GFP_KERNEL) {
                dev_warn!(self.dev, "cannot queue a request: {:?}\n", e);
                l.pfns.give_back(buf);
                sent = false;
                break;
            }
            *l.in_flight += 1;
            queued = true;
        }
        if queued {
            l.vq.kick();
        }
        // Keep an empty buffer for the caller's next PFNs.
        if sent && l.pfns.spare() == 0 && *l.in_flight != 0 {
            sent = self.wait_in_flight(&mut l, 1);
        }
        if *l.host != HostState::Answering || !sent {
            // Nothing more can be sent; the next step starts afresh.
            l.pfns.start(0);
            return false;
        }
        true
    }

    /// Waits until the host has used every buffer [`Host::send`] queued on `dir`. Returns
    /// `false` if it stalled first.
    fn finish(&self, inner: &mut Inner<'_>, dir: Direction) -> bool {
        match inner.link(dir) {
            Some(mut l) => {
                let n = *l.in_flight;
                self.wait_in_flight(&mut l, n)
            }
            None => inner.in_flight == 0,
        }
    }

    /// Takes back `n` used buffers from the queue, waiting at most [`HOST_TIMEOUT_MS`] for each.
    /// If the host lets that pass, it has stalled: no request is sent until it has used those it
    /// holds, which stay with the queue meanwhile ([`Host::catch_up`]). Waiting on would hold the
    /// size work, and the OOM notifier or compaction with it, for as long as the host sleeps.
    fn wait_in_flight(&self, l: &mut Link<'_, '_>, n: usize) -> bool {
        for _ in 0..n.min(*l.in_flight) {
            if *l.host != HostState::Answering {
                return false;
            }
            let Some(buf) = self.wait_used(l.vq) else {
                if l.vq.is_broken() {
                    dev_err!(
                        self.dev,
                        "the request queue is broken: no more requests are sent, and no page \
                         leaves the balloon\n"
                    );
                    *l.host = HostState::Gone;
                } else {
                    dev_warn!(
                        self.dev,
                        "the host has used no request for {} ms: the balloon waits for it, \
                         taking and giving back no page meanwhile\n",
                        HOST_TIMEOUT_MS
                    );
                    *l.host = HostState::Stalled;
                    // Before the size work looks at the queues again (`catch_up`): a buffer
                    // used after that look finds the flag set and brings the work back.
                    self.stalled.store(true, Release);
                }
                return false;
            };
            l.pfns.give_back(buf);
            *l.in_flight -= 1;
        }
        *l.host == HostState::Answering
    }

    /// Sends the PFNs in `inner.pfns` to the host and waits until it has read them (the C
    /// `tell_host()`, for a whole batch of buffers). Returns whether the host used every PFN:
    /// only then may the caller release deflated pages.
    fn tell_host(&self, inner: &mut Inner<'_>, dir: Direction) -> bool {
        let sent = self.send(inner, dir);
        // Also after a failed send: what did go out must come back first.
        let done = self.finish(inner, dir);
        sent && done
    }

    /// Sends the PFNs of the single guest page `pfn` on `dir`, and says how far they got.
    fn tell_page(&self, inner: &mut Inner<'_>, dir: Direction, pfn: usize) -> Told {
        inner.pfns.start(1);
        if inner.pfns.push_page(pfn).is_err() {
            return Told::No;
        }
        let before = inner.in_flight;
        let sent = self.send(inner, dir);
        let queued = inner.in_flight > before;
        match (self.finish(inner, dir) && sent, queued) {
            (true, _) => Told::Yes,
            (false, true) => Told::Queued,
            (false, false) => Told::No,
        }
    }

    /// Tells the host how large the balloon is (the C `update_balloon_size()`).
    fn update_balloon_size(&self) {
        let actual = self.lock.lock().num_pages;
        let written = self.dev.config::<Config>();
        if written
            .and_then(|c| c.write::<u32, CFG_ACTUAL>(actual))
            .is_err()
        {
            dev_warn!(self.dev, "cannot write the balloon size\n");
        }
    }

    /// Balloon pages (4 KiB) to inflate (positive) or deflate (negative) to reach the host's
    /// target (the C `towards_target()`).
    fn towards_target(&self) -> i64 {
        let config = self.dev.config::<Config>();
        let Ok(target) = config.and_then(|c| c.read::<u32, CFG_NUM_PAGES>()) else {
            return 0;
        };
        let current = self.lock.lock().num_pages;
        target::towards_target(target, current, PAGES_PER_PAGE)
    }
}

/// Deflates by up to `num` balloon pages, at most one step; returns how many (the C
/// `leak_balloon()`, batched).
fn leak(b: &Balloon<'_>, num: usize) -> usize {
    let mut inner = b.lock.lock();
    if inner.queues.is_none() {
        // Between freeze and restore the host cannot be told, so nothing may leave the balloon.
        return 0;
    }
    // We can't release more pages than taken.
    let num = num.min(STEP_PFNS_MAX).min(inner.num_pages as usize);
    inner.pfns.start(batch::buffers_for(num, Geometry::KERNEL));
    // Bounded by the room left, so that no page is ever released before the host was told.
    let mut guest_pages = num
        .div_ceil(PAGES_PER_PAGE as usize)
        .min(inner.deflated.capacity() - inner.deflated.len())
        .min(inner.pfns.guest_page_room());
    // One request buffer's worth at a time: the balloon core holds its page list lock, with
    // interrupts off, while it takes the pages out.
    // Full buffers go to the host [`SEND_BUFFERS`] at a time, so that the host reads them while
    // the next are taken out (`Host::send`).
    let mut done = 0;
    let mut told = true;
    while guest_pages != 0 {
        let Inner {
            pfns,
            deflated,
            num_pages,
            ..
        } = &mut *inner;
        let chunk = guest_pages.min(MAX_GUEST_PAGES);
        let got = b.dequeue_many(chunk, |page| {
            // Cannot fail: there is room for `guest_pages` pages.
            let _ = pfns.push_page(page.pfn());
            *num_pages -= PAGES_PER_PAGE;
            // Cannot fail: there is room for `guest_pages` pages.
            let _ = deflated.push_within_capacity(page);
        });
        done += got * PAGES_PER_PAGE as usize;
        if inner.pfns.filled() >= SEND_BUFFERS {
            told &= b.send(&mut inner, Direction::Deflate);
        }
        if got < chunk {
            // The balloon is empty, or the rest is isolated for migration.
            break;
        }
        guest_pages -= chunk;
    }
    // With VIRTIO_BALLOON_F_MUST_TELL_HOST the host must know before the pages are used again:
    // tell it first, release them afterwards.
    told &= b.tell_host(&mut inner, Direction::Deflate);
    if done != 0 && !told {
        // Not every PFN reached the host: put every page back rather than work out which did.
        // The host may think some of them deflated; the guest keeps them unused, which is safe
        // either way, and `actual` stays what the guest holds.
        let Inner {
            deflated,
            num_pages,
            ..
        } = &mut *inner;
        let back = b.enqueue_many(core::iter::from_fn(|| {
            deflated.pop().map(DeflatedPage::keep)
        }));
        *num_pages += back as u32 * PAGES_PER_PAGE;
        dev_warn!(
            b.dev,
            "the host was not told of a deflation: {} pages stay in the balloon\n",
            back
        );
        return 0;
    }
    while let Some(page) = inner.deflated.pop() {
        page.release();
    }
    done
}

impl BalloonMigrate for Host<'_> {
    /// The C `virtballoon_migratepage()`: the host learns that `newpage` is inflated and `page`
    /// deflated.
    fn migrate(
        &self,
        newpage: &MigratingPage<'_>,
        page: &MigratingPage<'_>,
        _mode: MigrateMode,
    ) -> Result {
        // Never wait for the balloon lock here: the inflation holding it may be what triggered
        // this compaction.
        if !module_parameters::migration.value() {
            // `migration=0`: the page stays where it is, as if the kernel had no balloon
            // migration. Not `EAGAIN`, which would only make the migration core try again.
            return Err(EBUSY);
        }
        let Some(mut inner) = self.lock.try_lock() else {
            return Err(EAGAIN);
        };
        if inner.queues.is_none() {
            return Err(EAGAIN);
        }
        if inner.host != HostState::Answering {
            // The host could not be told: the page stays where it is.
            return Err(EBUSY);
        }
        // The old page first (C tells the new one first): with MUST_TELL_HOST it may leave the
        // balloon only once the host knows, so unless the host used the request the migration
        // fails and the page stays, which is safe whatever the host does with the request later.
        if self.tell_page(&mut inner, Direction::Deflate, page.pfn()) != Told::Yes {
            return Err(EAGAIN);
        }
        // Then the new one. Once its request is with the host, the host may discard the page
        // whenever it reads it: the migration must then succeed, keeping the page in the
        // balloon, rather than fail and hand it to the page allocator. Only a request the host
        // never got lets it fail; the old page then stays in the balloon, unused, which the
        // host thinks deflated: safe, and told again when it leaves.
        match self.tell_page(&mut inner, Direction::Inflate, newpage.pfn()) {
            Told::Yes | Told::Queued => Ok(()),
            Told::No => Err(EAGAIN),
        }
    }
}

impl BalloonOom for Host<'_> {
    /// The C `virtio_balloon_oom_notify()`: gives back up to 256 balloon pages.
    fn oom_deflate(b: &Balloon<'_>) -> usize {
        let freed = leak(b, OOM_NR_PAGES) / PAGES_PER_PAGE as usize;
        b.update_balloon_size();
        freed
    }
}

impl BalloonReport for Host<'_> {
    /// The C `virtballoon_free_page_report()`: lends the free pages to the host on the reporting
    /// queue until it has processed them, however long that takes (as C) while the driver stays.
    ///
    /// Unlike C, removal and freeze do not wait forever: once the driver is leaving, a host
    /// that still holds the report after [`HOST_TIMEOUT_MS`] (or broke the queue) gets the
    /// device stopped, which is what hands the pages back to mm ([`HostState::Gone`]).
    fn report(b: &Balloon<'_>, pages: &ReportedPages<'_>) -> Result {
        let mut reporting = b.reporting.lock();
        let Some(r) = &mut *reporting else {
            return Err(ENODEV);
        };
        if b.leaving.load(Acquire) {
            return Err(ENODEV);
        }
        let token = r.token.take().ok_or(EBUSY)?;
        match r
            .vq
            .lend_inbuf_sg(pages, token, GFP_NOWAIT, |vq| b.wait_report(vq))
        {
            Ok(token) => {
                r.token = Some(token);
                Ok(())
            }
            Err((e, token)) => {
                r.token = token;
                if e != ETIMEDOUT {
                    dev_warn!(b.dev, "cannot report free pages: {:?}\n", e);
                    return Err(e);
                }
                let bytes: usize = (0..pages.len())
                    .filter_map(|i| pages.get(i))
                    .map(|(_pfn, len)| len)
                    .sum();
                dev_err!(
                    b.dev,
                    "the host did not give back {} KiB of reported free pages: the device is \
                     stopped to take them back\n",
                    bytes / 1024
                );
                // The device is dead until it is set up anew; nothing more is sent.
                b.lock.lock().host = HostState::Gone;
                b.stalled.store(false, Relaxed);
                Err(e)
            }
        }
    }
}

/// The driver's data for one balloon device.
#[pin_data]
struct RBalloon<'b> {
    dev: &'b virtio::Device<Bound>,
    #[pin]
    balloon: Balloon<'b>,
    /// Pages allocated for the next inflate step, outside the balloon lock as in C.
    /// Preallocated for a full step; only the size work uses it.
    #[pin]
    inflating: Mutex<KVVec<BalloonPage>>,
    #[pin]
    stats: Mutex<Option<StatsQueue<'b>>>,
    #[pin]
    puff: Mutex<RateLimit>,
    /// Taken in the config-change and queue callbacks, which run in interrupt context.
    #[pin]
    wakeup: SpinLockIrq<Wakeup>,
    /// Free page hinting, with its shrinker; `None` without `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    hint: Option<Pin<KBox<Shrinker<Hinting<'b>>>>>,
}

/// With `VIRTIO_BALLOON_F_PAGE_POISON`, tells the host the value free pages hold: zero for
/// `init_on_free`, else the poison byte in every byte. The host must then keep that value in
/// reported and hinted pages (QEMU does not discard them unless it is zero).
fn tell_poison_value(dev: &virtio::Device<Bound>) -> Result {
    if !dev.has_feature(bindings::VIRTIO_BALLOON_F_PAGE_POISON) {
        return Ok(());
    }
    let poison_val = if balloon::want_init_on_free() {
        0
    } else {
        u32::from_le_bytes([balloon::PAGE_POISON; 4])
    };
    dev.config::<Config>()?
        .write::<u32, CFG_POISON_VAL>(poison_val)
}

/// Creates the queues (the C `init_vqs()`), priming the stats queue with one buffer.
fn init_vqs<'b>(dev: &'b virtio::Device<Core<'_>>) -> Result<AllQueues<'b>> {
    let stats = dev.has_feature(bindings::VIRTIO_BALLOON_F_STATS_VQ);
    let reporting = dev.has_feature(bindings::VIRTIO_BALLOON_F_REPORTING);
    let hint = dev.has_feature(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT);
    let mut vqs = dev.find_vqs(&[
        VirtqueueInfo::new(c"inflate"),
        VirtqueueInfo::new(c"deflate"),
        VirtqueueInfo::new_if(stats, c"stats"),
        // The driver polls the free page queue, as the C driver (no callback).
        if hint {
            VirtqueueInfo::without_callback(c"free_page_vq")
        } else {
            VirtqueueInfo::absent()
        },
        VirtqueueInfo::new_if(reporting, c"reporting_vq"),
    ])?;
    let queues = Queues {
        inflate: vqs.take(VQ_INFLATE)?,
        deflate: vqs.take(VQ_DEFLATE)?,
    };
    let stats = if stats {
        let mut vq = vqs.take(VQ_STATS)?;
        let mut buf = KBox::new(StatsBuffer::new(dev.endian()), GFP_KERNEL)?;
        buf.fill(&MemStats::gather(), PAGE_SHIFT as u32);
        // The device is not live yet: it will use this buffer to ask for statistics later.
        if let Err((e, _)) = vq.add_outbuf(buf, GFP_KERNEL) {
            dev_warn!(dev, "init_vqs: add stat_vq failed\n");
            return Err(e);
        }
        vq.kick();
        Some(StatsQueue { vq })
    } else {
        None
    };
    let reporting = if reporting {
        Some(Reporting {
            vq: vqs.take(VQ_REPORTING)?,
            token: Some(KBox::new((), GFP_KERNEL)?),
        })
    } else {
        None
    };
    let hint = if hint {
        Some(vqs.take(VQ_FREE_PAGE)?)
    } else {
        None
    };
    Ok(AllQueues {
        queues,
        stats,
        hint,
        reporting,
    })
}

impl<'b> RBalloon<'b> {
    /// Inflates by up to `num` balloon pages, at most one step; returns how many (the C
    /// `fill_balloon()`, batched).
    fn fill(&self, num: usize) -> usize {
        let mut pages = self.inflating.lock();
        // Whole guest pages, at most a step's worth (which the vector has room for).
        let wanted = num
            .min(STEP_PFNS_MAX)
            .div_ceil(PAGES_PER_PAGE as usize)
            .min(pages.capacity());
        // Whole 2 MiB blocks where single pages would split one anyway (the page allocator has
        // no smaller free pages left), as fast as blocks and as kind to huge pages as single
        // pages; with `blocks=1`, while any block is free, even with smaller ones left.
        let eager = module_parameters::blocks.value();
        let mut blocks = true;
        while pages.len() < wanted {
            let room = wanted - pages.len();
            if blocks && room >= BLOCK_PAGES {
                let block = if eager {
                    BalloonBlock::alloc_if_free(BalloonBlock::HUGE_ORDER)
                } else {
                    BalloonBlock::alloc_if_smallest(BalloonBlock::HUGE_ORDER)
                };
                if let Some(block) = block {
                    for page in block {
                        // Cannot fail: the step has room for the block. Were it to, the page
                        // would just be freed.
                        let _ = pages.push_within_capacity(page);
                    }
                    continue;
                }
                // With `blocks=1` none is free: single pages from now on. By default, a block's
                // worth of single pages, then look again.
                blocks = !eager;
            }
            // Single pages in one go: the holes of fragmented memory first, as C's
            // one-at-a-time allocations take them.
            let want = if blocks { room.min(BLOCK_PAGES) } else { room };
            let got = self.balloon.alloc_pages(want, |page| {
                // Cannot fail: no more than the step's room is asked for. Were it to, the page
                // would just be freed.
                let _ = pages.push_within_capacity(page);
            });
            if got < want {
                if self.puff.lock().allow() {
                    dev_info!(
                        self.dev,
                        "Out of puff! Can't get {} pages\n",
                        PAGES_PER_PAGE
                    );
                }
                // Sleep for at least 1/5 of a second before the work item tries again.
                fsleep(OUT_OF_PUFF_DELAY);
                break;
            }
        }

        let mut inner = self.balloon.lock.lock();
        if inner.queues.is_none() {
            // Only between freeze and restore; the pages go back to the allocator.
            pages.clear();
            return 0;
        }
        inner.pfns.start(MAX_BUFFERS_IN_FLIGHT);
        // One request buffer's worth per call into the balloon core, which holds its page list
        // lock with interrupts off while it puts the pages in. In the order allocated, so that a
        // block's frames fill two whole buffers sent together (blocks come first, and a buffer
        // holds half of one). Full buffers go to the host [`SEND_BUFFERS`] at a time, so that the
        // host discards their pages while the next are put in (`Host::send`).
        let mut done = 0;
        let mut allocated = pages.drain_all().peekable();
        while allocated.peek().is_some() {
            let Inner {
                pfns, num_pages, ..
            } = &mut *inner;
            let mut chunk = 0;
            let enqueued = self.balloon.enqueue_many(core::iter::from_fn(|| {
                if chunk == MAX_GUEST_PAGES {
                    return None;
                }
                let page = allocated.next()?;
                // Cannot fail: at most one step's worth of pages was allocated.
                let _ = pfns.push_page(page.pfn());
                chunk += 1;
                Some(page)
            }));
            *num_pages += enqueued as u32 * PAGES_PER_PAGE;
            done += enqueued * PAGES_PER_PAGE as usize;
            // Should the host not be told, the pages stay in the balloon all the same: the guest
            // holds them unused and `actual` says so, which is safe whatever the host does.
            if inner.pfns.filled() >= SEND_BUFFERS {
                self.balloon.send(&mut inner, Direction::Inflate);
            }
        }
        self.balloon.tell_host(&mut inner, Direction::Inflate);
        done
    }

    /// Signals the events in `mask`, keeping the system awake until their work is done (the C
    /// `start_wakeup_event()`). Called in interrupt context too.
    fn start_wakeup_event(&self, mask: u32) {
        let mut w = self.wakeup.lock();
        w.signal_mask |= mask;
        if !w.processing {
            w.processing = true;
            self.dev.pm_stay_awake();
        }
    }

    /// A work item takes up the events in `mask` (the C `process_wakeup_event()`): one signalled
    /// after this will queue it again and keep the system awake until that run.
    fn process_wakeup_event(&self, mask: u32) {
        self.wakeup.lock().signal_mask &= !mask;
    }

    /// Lets the system suspend again once no event is left to handle (the C
    /// `finish_wakeup_event()`).
    fn finish_wakeup_event(&self) {
        let mut w = self.wakeup.lock();
        if w.signal_mask == 0 && w.processing {
            w.processing = false;
            self.dev.pm_relax();
        }
    }

    /// Queues the size work, keeping the system awake until it is done (the C
    /// `start_update_balloon_size()`).
    fn start_update_balloon_size(&self, dev: &virtio::Device<Bound>) {
        self.start_wakeup_event(WAKEUP_SIGNAL_ADJUST);
        dev.queue_work(WORK_SIZE);
    }

    /// Drops the events nobody will handle any more, once the work items are stopped for good.
    ///
    /// The C driver leaves the wakeup source active if an event came in while it was being
    /// removed; this lets the system suspend again instead.
    fn cancel_wakeup_events(&self) {
        self.wakeup.lock().signal_mask = 0;
        self.finish_wakeup_event();
    }

    /// The size work (the C `update_balloon_size_func()`).
    fn update_size(&self, dev: &virtio::Device<Bound>) {
        self.process_wakeup_event(WAKEUP_SIGNAL_ADJUST);
        let diff = self.balloon.towards_target();
        let current = self.balloon.lock.lock().num_pages;
        let step = target::next_step(diff, current, STEP_PFNS_MAX);
        // A host that holds requests cannot be told of any change: the balloon stays as it is
        // (no page is taken for a host that will not hear of it, none given back without
        // telling it), and the work does not come back for it: the queue callback brings it
        // back once the host uses a request again (`vq_callback`).
        let answering = self.balloon.catch_up();
        let done = match step {
            _ if !answering => 0,
            Step::Idle => 0,
            Step::Inflate(n) => self.fill(n),
            Step::Deflate(n) => leak(&self.balloon, n),
        };
        if diff != 0 {
            self.balloon.update_balloon_size();
        }
        // Should the host have stalled during this step, look at its queues once more: a
        // request it used between the timeout and `Host::stalled` being set raised no work, and
        // those used after this look will.
        let answering = answering && self.balloon.catch_up();
        // Not done yet: the next run finishes the event. `queue_work()` only refuses, from the
        // running work item, once the driver is going away: then nothing will finish it later.
        if target::remaining(diff, step, done) == 0 || !answering || !dev.queue_work(WORK_SIZE) {
            self.finish_wakeup_event();
        }
    }

    /// The stats work (the C `update_balloon_stats_func()`).
    fn update_stats_work(&self) {
        self.process_wakeup_event(WAKEUP_SIGNAL_STATS);
        self.update_stats();
        self.finish_wakeup_event();
    }

    /// Answers the host's request with fresh statistics (the C `stats_handle_request()`).
    fn update_stats(&self) {
        let mut guard = self.stats.lock();
        let Some(stats) = &mut *guard else {
            return;
        };
        let Some((mut buf, _len)) = stats.vq.get_buf() else {
            return;
        };
        buf.fill(&MemStats::gather(), PAGE_SHIFT as u32);
        if let Err((e, _)) = stats.vq.add_outbuf(buf, GFP_KERNEL) {
            dev_warn!(self.dev, "cannot queue statistics: {:?}\n", e);
            return;
        }
        stats.vq.kick();
    }

    /// Stops the balloon core's callbacks into the driver (the first half of the C
    /// `virtballoon_quiesce()`; the abstraction stops the work items).
    fn quiesce(&self) {
        self.balloon.unregister_page_reporting();
        self.balloon.unregister_oom_notifier();
    }

    /// Deflates the whole balloon and reports it (the first half of the C `remove_common()`).
    ///
    /// Stops early if the host cannot be told: the pages left then go back to mm only when the
    /// balloon is dropped, after the device was reset (a reset device holds no pages).
    fn deflate_all(&self) {
        loop {
            let answering = self.balloon.catch_up();
            let num = self.balloon.lock.lock().num_pages;
            if num == 0 {
                break;
            }
            if !answering {
                dev_err!(
                    self.dev,
                    "{} balloon pages (4 KiB) not deflated: the host does not answer\n",
                    num
                );
                break;
            }
            if leak(&self.balloon, num as usize) == 0 {
                if self.balloon.isolated_pages() == 0 {
                    // Not migration: the host could not be told (see `leak`).
                    dev_err!(self.dev, "{} balloon pages (4 KiB) not deflated\n", num);
                    break;
                }
                // Every page left is isolated for migration: let the migration finish.
                fsleep(Delta::from_millis(1));
            }
        }
        self.balloon.update_balloon_size();
    }

    /// Puts freshly created queues in place.
    fn install(&self, all: AllQueues<'b>) {
        let mut inner = self.balloon.lock.lock();
        inner.queues = Some(all.queues);
        // Whatever was in flight went with the old queues.
        inner.in_flight = 0;
        drop(inner);
        *self.stats.lock() = all.stats;
        *self.balloon.reporting.lock() = all.reporting;
        if let (Some(hint), Some(vq)) = (self.hint.as_ref(), all.hint) {
            hint.install(vq);
        }
    }
}

struct RBalloonDriver;

impl virtio::Driver for RBalloonDriver {
    type Data<'bound> = RBalloon<'bound>;

    const ID_TABLE: virtio::IdTable = &RBALLOON_TABLE;

    // The C driver's table.
    const FEATURES: &'static [u32] = &[
        bindings::VIRTIO_BALLOON_F_MUST_TELL_HOST,
        bindings::VIRTIO_BALLOON_F_STATS_VQ,
        bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT,
        bindings::VIRTIO_BALLOON_F_PAGE_POISON,
        bindings::VIRTIO_BALLOON_F_REPORTING,
    ];

    const WORK_ITEMS: usize = 3;

    fn validate(features: &mut virtio::FeatureNegotiation<'_>) -> Result {
        // Inform the hypervisor that our pages are poisoned or initialized. If we cannot do that
        // then we should disable page reporting as it could potentially change the contents of
        // our free pages.
        if !balloon::want_init_on_free() && !balloon::page_poisoning_enabled() {
            features.clear(bindings::VIRTIO_BALLOON_F_PAGE_POISON);
        } else if !features.has(bindings::VIRTIO_BALLOON_F_PAGE_POISON) {
            features.clear(bindings::VIRTIO_BALLOON_F_REPORTING);
        }
        // No indirect descriptors, so that adding buffers while reporting never allocates.
        features.clear(virtio::VIRTIO_RING_F_INDIRECT_DESC);
        // Balloon PFNs are guest-physical, never translated by an IOMMU.
        features.clear(bindings::VIRTIO_F_ACCESS_PLATFORM);
        Ok(())
    }

    fn probe<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            if !dev.has_config_access() {
                dev_err!(dev, "probe failure: config access disabled\n");
                return Err(EINVAL);
            }
            let mut all = init_vqs(dev)?;
            let bound: &'bound virtio::Device<Bound> = dev;
            let hint = match all.hint.take() {
                Some(vq) => {
                    // One slot stays for the command id, so hinting needs at least two.
                    if vq.size() < 2 {
                        return Err(ENOSPC);
                    }
                    // Hinting allocates free memory block by block for as long as there is some:
                    // too long for the shared system workqueue.
                    dev.alloc_own_workqueue(c"balloon-wq")?;
                    // Blocks may be given back to the page allocator even while the host still
                    // considers them (the shrinker).
                    Some(KBox::pin_init(
                        Shrinker::new(c"rballoon", Hinting::new(bound, vq)),
                        GFP_KERNEL,
                    )?)
                }
                None => None,
            };
            let pfns = PfnBatch::new(
                MAX_BUFFERS_IN_FLIGHT,
                Geometry::KERNEL,
                bound.endian(),
                GFP_KERNEL,
            )?;
            // 32 KiB each with 4 KiB pages: may come from vmalloc.
            let deflated = KVVec::with_capacity(STEP_GUEST_PAGES, GFP_KERNEL)?;
            let inflating = KVVec::with_capacity(STEP_GUEST_PAGES, GFP_KERNEL)?;

            tell_poison_value(dev)?;

            // The balloon cannot wake the system itself, but it handles wakeup events passed up
            // by the transport. Wakeup sources do not nest, so it uses the device's own, not the
            // transport's (as the C driver).
            dev.set_wakeup_capable(true);

            // Without DEFLATE_ON_OOM inflated pages leave the managed page count, as in C.
            let adjust = !dev.has_feature(bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM);

            Ok(try_pin_init!(RBalloon {
                dev: bound,
                balloon <- BalloonDevInfo::new(adjust, try_pin_init!(Host {
                    dev: bound,
                    lock <- new_mutex!(Inner {
                        queues: Some(all.queues),
                        pfns,
                        deflated,
                        num_pages: 0,
                        in_flight: 0,
                        host: HostState::Answering,
                    }),
                    acks <- new_spinlock_irq!(0),
                    acked <- new_condvar!(),
                    stalled: Atomic::new(false),
                    leaving: Atomic::new(false),
                    reporting <- new_mutex!(all.reporting),
                }? Error)),
                inflating <- new_mutex!(inflating),
                stats <- new_mutex!(all.stats),
                puff <- new_mutex!(RateLimit::new()),
                wakeup <- new_spinlock_irq!(Wakeup {
                    processing: false,
                    signal_mask: 0,
                }),
                hint,
            }? Error))
        })
    }

    fn ready<'bound>(dev: &'bound virtio::Device<Core<'_>>, this: Pin<&RBalloon<'bound>>) {
        // Registered here rather than in probe: the callbacks need the device live. After a
        // restore they are registered still (EBUSY).
        if dev.has_feature(bindings::VIRTIO_BALLOON_F_DEFLATE_ON_OOM) {
            if let Err(e) = this.balloon.register_oom_notifier(OOM_NOTIFY_PRIORITY) {
                if e != EBUSY {
                    dev_warn!(dev, "cannot register the OOM notifier: {:?}\n", e);
                }
            }
        }
        let capacity = this.balloon.reporting.lock().as_ref().map(|r| r.vq.size());
        if let Some(capacity) = capacity {
            if let Err(e) = this
                .balloon
                .register_page_reporting(Geometry::KERNEL.report_order(), capacity)
            {
                if e != EBUSY {
                    dev_warn!(dev, "cannot register free page reporting: {:?}\n", e);
                }
            }
        }
        // The host may have set a target before the driver was bound.
        if this.balloon.towards_target() != 0 {
            this.start_update_balloon_size(dev);
        }
        // Or asked for hints: the first run reads the command id whatever it is.
        if this.hint.is_some() {
            dev.queue_own_work(WORK_HINT);
        }
    }

    fn unbind<'bound>(_dev: &'bound virtio::Device<Core<'_>>, this: Pin<&RBalloon<'bound>>) {
        // Size and stats work are stopped already; the queues still work. Unregistering page
        // reporting waits for a report in flight: bounded from here on.
        this.balloon.leave();
        this.quiesce();
        this.deflate_all();
        // Kept hint blocks go back now; those still queued once the device is reset and the
        // queue dropped (the C `remove_common()`).
        if let Some(hint) = this.hint.as_ref() {
            let _lent = hint.return_all();
        }
        this.cancel_wakeup_events();
    }

    fn shutdown<'bound>(_dev: &'bound virtio::Device<Core<'_>>, this: Pin<&RBalloon<'bound>>) {
        this.quiesce();
    }

    fn config_changed<'bound>(dev: &'bound virtio::Device<Bound>, this: Pin<&RBalloon<'bound>>) {
        // Queueing is refused once the driver is going away: the C `stop_update` check. A wakeup
        // event started then is dropped by `unbind`.
        this.start_update_balloon_size(dev);
        // The command id may have changed (the C `virtio_balloon_queue_free_page_work()`).
        if let Some(hint) = this.hint.as_ref() {
            hint.config_changed();
            dev.queue_own_work(WORK_HINT);
        }
    }

    fn vq_callback<'bound>(
        dev: &'bound virtio::Device<Bound>,
        this: Pin<&RBalloon<'bound>>,
        queue: usize,
    ) {
        match queue {
            VQ_STATS => {
                this.start_wakeup_event(WAKEUP_SIGNAL_STATS);
                dev.queue_work(WORK_STATS);
            }
            _ => {
                this.balloon.ack();
                // A stalled host used a request it held: the size work takes the buffers back
                // and, once it has them all, follows the target again.
                if this.balloon.stalled.load(Relaxed) {
                    this.start_update_balloon_size(dev);
                }
            }
        }
    }

    fn work<'bound>(dev: &'bound virtio::Device<Bound>, this: Pin<&RBalloon<'bound>>, id: usize) {
        match id {
            WORK_SIZE => this.update_size(dev),
            WORK_STATS => this.update_stats_work(),
            WORK_HINT => {
                if let Some(hint) = this.hint.as_ref() {
                    hint.work();
                }
            }
            _ => {}
        }
    }

    fn freeze<'bound>(
        _dev: &'bound virtio::Device<Core<'_>>,
        this: Pin<&RBalloon<'bound>>,
    ) -> Result {
        // The workqueue is frozen already, but page reporting is not: a report in flight holds
        // the reporting queue, for a bounded time from here on. Deflate everything, then drop
        // the queues, which stops the device and deletes them (the C `remove_common()`).
        this.balloon.leave();
        this.deflate_all();
        let queues = this.balloon.lock.lock().queues.take();
        let stats = this.stats.lock().take();
        let reporting = this.balloon.reporting.lock().take();
        // Kept hint blocks go back; queued ones with the queue.
        let hint = this.hint.as_ref().and_then(|h| h.take_vq());
        drop((queues, stats, hint, reporting));
        Ok(())
    }

    fn restore<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
        this: Pin<&RBalloon<'bound>>,
    ) -> Result {
        this.balloon.start_afresh()?;
        // The reset made the host forget it (QEMU zeroes it), and the C driver does not tell it
        // again: QEMU then discards reported pages, and the page allocator finds their poison
        // gone ("pagealloc: memory corruption" on the debug guest after a freeze).
        tell_poison_value(dev)?;
        this.install(init_vqs(dev)?);
        // Tell the host the (empty) size, as the C restore does.
        this.balloon.update_balloon_size();
        Ok(())
    }
}

kernel::module_virtio_driver! {
    type: RBalloonDriver,
    name: "rballoon",
    authors: ["rballoon developers"],
    description: "Virtio balloon driver (Rust)",
    license: "GPL",
    params: {
        migration: bool {
            default: true,
            description: "Let compaction migrate inflated pages \
                (0: refuse, they stay where they are)",
        },
        blocks: bool {
            default: false,
            description: "Take whole free 2 MiB blocks even while smaller free pages are left: \
                whole host huge pages, fewer guest huge pages after compaction \
                (0, the default: the smallest free pages first, as C)",
        },
    },
}
