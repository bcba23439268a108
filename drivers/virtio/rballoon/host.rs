// SPDX-License-Identifier: GPL-2.0

//! The host link: what the driver holds of the device's inflate, deflate and reporting queues,
//! whether the host answers, and the waits for it.

use kernel::{
    balloon::{BalloonDevInfo, DeflatedPage},
    device::Bound,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Relaxed, Release},
        CondVar, CondVarTimeoutResult, Mutex, SpinLockIrq,
    },
    time::{delay::fsleep, msecs_to_jiffies, Delta},
    virtio::{self, Virtqueue},
};

use crate::{
    batch::{PfnBatch, MAX_BUFFERS_IN_FLIGHT},
    pfn::{Geometry, PfnBuffer, PAGES_PER_PAGE},
    target, Config, CFG_ACTUAL, CFG_NUM_PAGES,
};

/// The inflate and deflate queues.
pub(crate) struct Queues<'b> {
    pub(crate) inflate: Virtqueue<'b, PfnBuffer>,
    pub(crate) deflate: Virtqueue<'b, PfnBuffer>,
}

/// The reporting queue and the token that identifies a report in it.
pub(crate) struct Reporting<'b> {
    pub(crate) vq: Virtqueue<'b, ()>,
    /// `None` only while a report is with the host.
    pub(crate) token: Option<KBox<()>>,
}

/// What the balloon lock protects (the C driver's `balloon_lock`).
pub(crate) struct Inner<'b> {
    /// `None` between freeze and restore.
    pub(crate) queues: Option<Queues<'b>>,
    /// The request buffers; all of them are here but while the host holds some.
    pub(crate) pfns: PfnBatch,
    /// Buffers queued on the inflate or deflate queue and not used yet (see [`Host::send`]).
    pub(crate) in_flight: usize,
    /// Pages being deflated, kept until the host was told. Preallocated for a full step.
    pub(crate) deflated: KVVec<DeflatedPage>,
    /// Balloon pages (4 KiB) the host has been told about.
    pub(crate) num_pages: u32,
    /// Whether the host takes requests.
    pub(crate) host: HostState,
}

/// Whether the host takes inflate and deflate requests.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostState {
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

/// How long the driver waits for the host to use an inflate or deflate request. QEMU answers in
/// well under a millisecond, even under TCG with a debug guest; a host that takes this long is
/// broken or hostile, and waiting longer would hang the size work, remove and freeze with it.
pub(crate) const HOST_TIMEOUT_MS: u32 = 30_000;

/// The part of the driver that the balloon core's callbacks (migration, OOM, page reporting) run
/// on.
#[pin_data]
pub(crate) struct Host<'b> {
    pub(crate) dev: &'b virtio::Device<Bound>,
    #[pin]
    pub(crate) lock: Mutex<Inner<'b>>,
    /// Counts the used-buffer notifications of the inflate, deflate and reporting queues.
    #[pin]
    pub(crate) acks: SpinLockIrq<u64>,
    #[pin]
    pub(crate) acked: CondVar,
    /// Whether [`Inner::host`] is [`HostState::Stalled`], for the queue callbacks (interrupt
    /// context, where the lock cannot be taken): a buffer used then brings the size work back to
    /// catch up with the host.
    pub(crate) stalled: Atomic<bool>,
    /// The driver is going away (unbind, freeze): a report waits for the host a bounded time
    /// only, and no new one starts.
    pub(crate) leaving: Atomic<bool>,
    /// `None` without `VIRTIO_BALLOON_F_REPORTING`, and between freeze and restore.
    #[pin]
    pub(crate) reporting: Mutex<Option<Reporting<'b>>>,
}

/// The balloon device: the balloon core's page list and the driver state it calls back into.
pub(crate) type Balloon<'b> = BalloonDevInfo<Host<'b>>;

impl Host<'_> {
    /// Whether the host answers requests. A stalled host that has used every request it held
    /// since answers again: its buffers are taken back, and the balloon follows the target again.
    pub(crate) fn catch_up(&self) -> bool {
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
    pub(crate) fn start_afresh(&self) -> Result {
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
    pub(crate) fn leave(&self) {
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
    pub(crate) fn wait_report<T>(&self, vq: &mut Virtqueue<'_, T>) -> Option<KBox<T>> {
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
    pub(crate) fn wait_leaving(&self) {
        let mut acks = self.acks.lock();
        // `leave` sets the flag before it takes the lock to notify: no wakeup is lost.
        while !self.leaving.load(Acquire) {
            let _signal = self.acked.wait_interruptible(&mut acks);
        }
    }

    /// A queue used a buffer (the C `balloon_ack()`).
    pub(crate) fn ack(&self) {
        let mut acks = self.acks.lock();
        *acks = acks.wrapping_add(1);
        drop(acks);
        self.acked.notify_all();
    }

    /// Waits at most [`HOST_TIMEOUT_MS`] until the device returns a buffer on `vq` (the C
    /// `wait_event(vb->acked, virtqueue_get_buf(vq, &len))`, bounded); `None` if it did not, or
    /// broke the queue (the buffer then stays with the queue until the device is reset).
    pub(crate) fn wait_used<T>(&self, vq: &mut Virtqueue<'_, T>) -> Option<KBox<T>> {
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

    /// Tells the host how large the balloon is (the C `update_balloon_size()`).
    pub(crate) fn update_balloon_size(&self) {
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
    pub(crate) fn towards_target(&self) -> i64 {
        let config = self.dev.config::<Config>();
        let Ok(target) = config.and_then(|c| c.read::<u32, CFG_NUM_PAGES>()) else {
            return 0;
        };
        let current = self.lock.lock().num_pages;
        target::towards_target(target, current, PAGES_PER_PAGE)
    }
}
