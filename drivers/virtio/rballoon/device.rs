// SPDX-License-Identifier: GPL-2.0

//! The driver's state for one balloon device: its queues, the stats and wakeup work, and what
//! probe and restore set up.

use kernel::{
    balloon::{self, BalloonPage},
    bindings,
    device::{Bound, Core},
    mm::vmstat::MemStats,
    page::PAGE_SHIFT,
    prelude::*,
    shrinker::Shrinker,
    sync::{Mutex, SpinLockIrq},
    virtio::{self, Virtqueue, VirtqueueInfo},
};

use crate::{
    hint_queue::{HintVq, Hinting},
    host::{Balloon, Queues, Reporting},
    ratelimit::RateLimit,
    stats::StatsBuffer,
    Config, Queue, Work, CFG_POISON_VAL, WAKEUP_SIGNAL_ADJUST, WAKEUP_SIGNAL_STATS,
};

/// The wakeup event state (the C driver's `wakeup_lock` and what it protects).
pub(crate) struct Wakeup {
    /// Whether the device's wakeup source is active (`pm_stay_awake()` was called).
    pub(crate) processing: bool,
    /// `WAKEUP_SIGNAL_*` bits of the events signalled but not yet taken up by their work item.
    pub(crate) signal_mask: u32,
}

/// The stats queue. Its single buffer goes back and forth between the driver and the host.
pub(crate) struct StatsQueue<'b> {
    pub(crate) vq: Virtqueue<'b, StatsBuffer>,
}

/// All queues, as created together by [`init_vqs`].
pub(crate) struct AllQueues<'b> {
    pub(crate) queues: Queues<'b>,
    pub(crate) stats: Option<StatsQueue<'b>>,
    pub(crate) hint: Option<HintVq<'b>>,
    pub(crate) reporting: Option<Reporting<'b>>,
}

/// The driver's data for one balloon device.
#[pin_data]
pub(crate) struct RBalloon<'b> {
    pub(crate) dev: &'b virtio::Device<Bound>,
    #[pin]
    pub(crate) balloon: Balloon<'b>,
    /// Pages allocated for the next inflate step, outside the balloon lock as in C.
    /// Preallocated for a full step; only the size work uses it.
    #[pin]
    pub(crate) inflating: Mutex<KVVec<BalloonPage>>,
    #[pin]
    pub(crate) stats: Mutex<Option<StatsQueue<'b>>>,
    #[pin]
    pub(crate) puff: Mutex<RateLimit>,
    /// Taken in the config-change and queue callbacks, which run in interrupt context.
    #[pin]
    pub(crate) wakeup: SpinLockIrq<Wakeup>,
    /// Free page hinting, with its shrinker; `None` without `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    pub(crate) hint: Option<Pin<KBox<Shrinker<Hinting<'b>>>>>,
}

/// With `VIRTIO_BALLOON_F_PAGE_POISON`, tells the host the value free pages hold: zero for
/// `init_on_free`, else the poison byte in every byte. The host must then keep that value in
/// reported and hinted pages (QEMU does not discard them unless it is zero).
pub(crate) fn tell_poison_value(dev: &virtio::Device<Bound>) -> Result {
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
pub(crate) fn init_vqs<'b>(dev: &'b virtio::Device<Core<'_>>) -> Result<AllQueues<'b>> {
    let stats = dev.has_feature(bindings::VIRTIO_BALLOON_F_STATS_VQ);
    let reporting = dev.has_feature(bindings::VIRTIO_BALLOON_F_REPORTING);
    let hint = dev.has_feature(bindings::VIRTIO_BALLOON_F_FREE_PAGE_HINT);
    let mut vqs = dev.find_vqs(&[
        VirtqueueInfo::new(Queue::Inflate, c"inflate"),
        VirtqueueInfo::new(Queue::Deflate, c"deflate"),
        VirtqueueInfo::new_if(stats, Queue::Stats, c"stats"),
        // The driver polls the free page queue, as the C driver (no callback).
        if hint {
            VirtqueueInfo::without_callback(Queue::FreePage, c"free_page_vq")
        } else {
            VirtqueueInfo::absent(Queue::FreePage)
        },
        VirtqueueInfo::new_if(reporting, Queue::Reporting, c"reporting_vq"),
    ])?;
    let queues = Queues {
        inflate: vqs.take(Queue::Inflate)?,
        deflate: vqs.take(Queue::Deflate)?,
    };
    let stats = if stats {
        let mut vq = vqs.take(Queue::Stats)?;
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
            vq: vqs.take(Queue::Reporting)?,
            token: Some(KBox::new((), GFP_KERNEL)?),
        })
    } else {
        None
    };
    let hint = if hint {
        Some(vqs.take(Queue::FreePage)?)
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
    /// Signals the events in `mask`, keeping the system awake until their work is done (the C
    /// `start_wakeup_event()`). Called in interrupt context too.
    pub(crate) fn start_wakeup_event(&self, mask: u32) {
        let mut w = self.wakeup.lock();
        w.signal_mask |= mask;
        if !w.processing {
            w.processing = true;
            self.dev.pm_stay_awake();
        }
    }

    /// A work item takes up the events in `mask` (the C `process_wakeup_event()`): one signalled
    /// after this will queue it again and keep the system awake until that run.
    pub(crate) fn process_wakeup_event(&self, mask: u32) {
        self.wakeup.lock().signal_mask &= !mask;
    }

    /// Lets the system suspend again once no event is left to handle (the C
    /// `finish_wakeup_event()`).
    pub(crate) fn finish_wakeup_event(&self) {
        let mut w = self.wakeup.lock();
        if w.signal_mask == 0 && w.processing {
            w.processing = false;
            self.dev.pm_relax();
        }
    }

    /// Queues the size work, keeping the system awake until it is done (the C
    /// `start_update_balloon_size()`).
    pub(crate) fn start_update_balloon_size(&self, dev: &virtio::Device<Bound>) {
        self.start_wakeup_event(WAKEUP_SIGNAL_ADJUST);
        dev.queue_work(Work::Size);
    }

    /// Drops the events nobody will handle any more, once the work items are stopped for good.
    ///
    /// The C driver leaves the wakeup source active if an event came in while it was being
    /// removed; this lets the system suspend again instead.
    pub(crate) fn cancel_wakeup_events(&self) {
        self.wakeup.lock().signal_mask = 0;
        self.finish_wakeup_event();
    }

    /// The stats work (the C `update_balloon_stats_func()`).
    pub(crate) fn update_stats_work(&self) {
        self.process_wakeup_event(WAKEUP_SIGNAL_STATS);
        self.update_stats();
        self.finish_wakeup_event();
    }

    /// Answers the host's request with fresh statistics (the C `stats_handle_request()`).
    pub(crate) fn update_stats(&self) {
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
    pub(crate) fn quiesce(&self) {
        self.balloon.unregister_page_reporting();
        self.balloon.unregister_oom_notifier();
    }

    /// Puts freshly created queues in place.
    pub(crate) fn install(&self, all: AllQueues<'b>) {
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
