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
    balloon::{self, BalloonBlock, BalloonDevInfo},
    binding::Binding,
    bindings,
    device::{Bound, Core},
    new_condvar, new_mutex, new_spinlock_irq,
    prelude::*,
    shrinker::Shrinker,
    sync::atomic::{Atomic, Relaxed},
    time::Delta,
    virtio,
};

// One role a file: the lifecycle callbacks here, the device's state in `device`, the host link in
// `host` and `requests`, the size work in `size`, the balloon core's callbacks in `callbacks`.
mod batch;
mod callbacks;
mod device;
mod hint;
mod hint_queue;
mod host;
mod pfn;
mod ratelimit;
mod requests;
mod size;
mod stats;
mod target;

use batch::{PfnBatch, MAX_BUFFERS_IN_FLIGHT, STEP_PFNS_MAX};
use device::{init_vqs, tell_poison_value, RBalloon, Wakeup};
use hint_queue::Hinting;
use host::{Host, HostState, Inner};
use pfn::{Geometry, PfnBuffer, PAGES_PER_PAGE, VIRTIO_BALLOON_ARRAY_PFNS_MAX};
use ratelimit::RateLimit;
use stats::StatsBuffer;

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

kernel::virtio_ids! {
    /// The queues, in the order of the C `enum virtio_balloon_vq`.
    enum Queue { Inflate, Deflate, Stats, FreePage, Reporting }
}

kernel::virtio_ids! {
    /// Deferred work: following the target, answering for statistics, free page hinting (on
    /// the device's own workqueue).
    enum Work { Size, Stats, Hint }
}

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

struct RBalloonDriver;

impl virtio::Driver for RBalloonDriver {
    type Data<'bound> = RBalloon<'bound>;
    type Queue = Queue;
    type Work = Work;

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
        binding: Binding<'bound>,
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
                        Shrinker::new(binding, c"rballoon", Hinting::new(bound, vq)),
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
                balloon <- BalloonDevInfo::new(binding, adjust, try_pin_init!(Host {
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
            dev.queue_own_work(Work::Hint);
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
            dev.queue_own_work(Work::Hint);
        }
    }

    fn vq_callback<'bound>(
        dev: &'bound virtio::Device<Bound>,
        this: Pin<&RBalloon<'bound>>,
        queue: Queue,
    ) {
        match queue {
            Queue::Stats => {
                this.start_wakeup_event(WAKEUP_SIGNAL_STATS);
                dev.queue_work(Work::Stats);
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

    fn work<'bound>(dev: &'bound virtio::Device<Bound>, this: Pin<&RBalloon<'bound>>, work: Work) {
        match work {
            Work::Size => this.update_size(dev),
            Work::Stats => this.update_stats_work(),
            Work::Hint => {
                if let Some(hint) = this.hint.as_ref() {
                    hint.work();
                }
            }
        }
    }

    fn freeze<'bound>(
        _dev: &'bound virtio::Device<Core<'_>>,
        this: Pin<&RBalloon<'bound>>,
    ) -> Result {
        // The workqueue is frozen already, but page reporting is not: a report in flight holds
        // the reporting queue, for a bounded time from here on. Deflate everything, then drop
        // the queues; the bus stops the device and deletes them (the C `remove_common()`).
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
